"""Launching prismrl runs in fresh processes for the distributed tests: loopback only, cleaned up on any exit."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LAUNCHER_VARS = {"MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE",
                 "GROUP_RANK", "PL_GLOBAL_SEED", "PL_SEED_WORKERS", "TORCHELASTIC_RUN_ID"}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without launcher variables, offline, one thread per process, loopback rendezvous."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "GLOO_SOCKET_IFNAME": "lo",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))})
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """Run ``args`` in its own process group; on timeout or error every process of the group is killed."""
    proc = subprocess.Popen(args, cwd=cwd, env=clean_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stray children (a rank left behind by a failed peer)
        except ProcessLookupError:
            pass
    result = subprocess.CompletedProcess(args, proc.returncode, out, err)
    assert result.returncode == 0, f"{' '.join(args[:6])} ... failed:\n{err[-6000:]}"
    return result


def run_together(commands: list[list[str]], cwd: Path, timeout: float = 600, **env: str) -> list[str]:
    """Start every command at once (e.g. one torchrun per "node"), wait for all; returns their stderr. Any failure
    or timeout kills every process group."""
    procs = [subprocess.Popen(args, cwd=cwd, env=clean_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, start_new_session=True) for args in commands]
    try:
        errs = [proc.communicate(timeout=timeout)[1] for proc in procs]
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for proc, err in zip(procs, errs):
        assert proc.returncode == 0, f"{' '.join(proc.args[:8])} ... failed:\n{err[-6000:]}"
    return errs


def fit(config: str, workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``prismrl fit --config <repo>/<config> *args`` in a fresh process, outputs under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    return run([sys.executable, "-m", "prismrl.cli", "fit", "--config", str(REPO / config), *args], workdir, timeout)


def metric_rows(metrics_csv: Path, key: str) -> dict[int, float]:
    """step -> value of column ``key`` in a CSVLogger metrics.csv (rows without it skipped)."""
    with open(metrics_csv) as f:
        return {int(row["step"]): float(row[key]) for row in csv.DictReader(f) if row.get(key)}
