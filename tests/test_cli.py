"""The prismrl LightningCLI: datamodule values reach the model as init arguments through instantiation links."""

from __future__ import annotations

import pytest
from lightning.pytorch.cli import instantiate_module

from prismrl.cli import build_cli
from prismrl.data.digits import DIGIT_NAMES, ZERO_SHOT_TEMPLATES


@pytest.fixture
def build(repo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return lambda config, *args: build_cli(["--config", str(repo_root / config), *args], run=False)


def reload(model):
    """What ``load_from_checkpoint`` does with a CLI-built module's hyperparameters."""
    return instantiate_module(type(model), {k: v for k, v in model.hparams.items() if k != "_instantiator"})


def test_alignment_gets_the_datamodules_class_names_and_templates_as_init_args(build):
    model = build("configs/alignment/tiny.yaml").model
    assert model.hparams.class_names == DIGIT_NAMES and model.class_names == DIGIT_NAMES
    assert model.hparams.zero_shot_templates == ZERO_SHOT_TEMPLATES
    assert reload(model).class_names == DIGIT_NAMES


def test_a_model_without_the_linked_argument_builds_and_reloads(build):
    # DigitsDataModule has class_names and zero_shot_templates; VisionLanguageSFTModule takes neither
    cli = build("configs/vl_sft/tiny_trm.yaml", "--data.class_path", "prismrl.datamodules.DigitsDataModule")
    assert cli.datamodule.class_names == DIGIT_NAMES
    assert not {"class_names", "zero_shot_templates"} & set(cli.model.hparams)
    assert reload(cli.model).question_types == []  # DigitsDataModule has no question_types: the default stays


def test_linked_arguments_are_derived_not_printed(repo_root, capsys):
    with pytest.raises(SystemExit):
        build_cli(["fit", "--config", str(repo_root / "configs/alignment/tiny.yaml"), "--print_config"])
    printed = capsys.readouterr().out
    assert "loader:" in printed and "class_names" not in printed.split("\ndata:")[0]


def test_a_linked_name_that_is_also_a_data_argument_is_recorded_once(build):
    # DigitQADataModule(question_types=None) resolves to the built-in types; both modules record the resolved list
    cli = build("configs/vl_sft/tiny_trm.yaml")
    assert cli.model.hparams.question_types == cli.datamodule.hparams.question_types == cli.datamodule.question_types
    assert cli.datamodule.hparams_initial.question_types == cli.datamodule.question_types


# --- run folders, resume, wrong-stage checkpoints, error output, short names -------------------------------------

import csv  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from prismrl.apps.runs import check_checkpoint_matches_config, latest_checkpoint  # noqa: E402
from prismrl.lightning_modules import _LAZY as STAGES  # noqa: E402
from prismrl.lightning_modules.plumbing import CHECKPOINT_KEY  # noqa: E402

TINY = "configs/alignment/tiny.yaml"
SHORT_FIT = ("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
             "--trainer.enable_model_summary", "false")


def _fit(repo_root, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_cli(["fit", "--config", str(repo_root / TINY), *SHORT_FIT, *args])
    return [str(w.message) for w in caught]


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.ckpt"))}


def _rows(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def runs(repo_root, tmp_path_factory):
    """Two short fits of the tiny alignment config in one work folder, then a resumed one, then a named one."""
    workdir = tmp_path_factory.mktemp("runs")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        run = workdir / "runs/alignment/tiny"
        first_warnings = _fit(repo_root)
        first = _digest(run / "version_0/checkpoints")
        first_rows = _rows(run / "version_0/metrics.csv")
        second_warnings = _fit(repo_root)
        (run / "version_1/checkpoints/last.ckpt.partial").write_bytes(b"half a checkpoint")
        resumed_warnings = _fit(repo_root, "--trainer.max_epochs", "2", "--ckpt_path", "last")
        _fit(repo_root, "--run_name", "second_try")
        _fit(repo_root, "--trainer.default_root_dir", str(workdir / "elsewhere"))
        return dict(workdir=workdir, run=run, first=first, first_rows=first_rows,
                    warnings=first_warnings + second_warnings + resumed_warnings)
    finally:
        os.chdir(cwd)


def test_each_fit_writes_its_own_version_folder_and_leaves_the_others_checkpoints_untouched(runs):
    run = runs["run"]
    assert sorted(p.name for p in run.iterdir()) == ["version_0", "version_1"]
    assert _digest(run / "version_0/checkpoints") == runs["first"]
    assert set(runs["first"]) == {"best-epoch=00.ckpt", "last.ckpt"}
    for version in ("version_0", "version_1"):
        folder = run / version
        assert {"metrics.csv", "config.yaml", "hparams.yaml", "checkpoints", "plots"} <= {p.name for p in folder.iterdir()}
        assert list(folder.glob("events.out.tfevents.*"))
    assert _rows(run / "version_0/metrics.csv") == runs["first_rows"]


def test_loggers_sharing_a_folder_do_not_warn_about_deleting_files(runs):
    assert runs["warnings"] and not [w for w in runs["warnings"] if "will be deleted" in w or "exists and is not empty" in w]


def test_run_name_and_default_root_dir_move_every_output(runs):
    for root in (runs["workdir"] / "runs/alignment/second_try", runs["workdir"] / "elsewhere"):
        assert (root / "version_0/checkpoints/last.ckpt").is_file() and (root / "version_0/metrics.csv").is_file()


def test_ckpt_path_last_resumes_the_newest_version_and_appends_to_its_metrics(runs):
    run = runs["run"]
    assert latest_checkpoint(run) == run / "version_1/checkpoints/last.ckpt"
    rows = _rows(run / "version_1/metrics.csv")
    epochs = sorted({int(float(r["epoch"])) for r in rows if r.get("epoch")})
    assert epochs == [0, 1]  # epoch 0 from the first fit of version_1, epoch 1 from the resumed one
    assert torch.load(run / "version_1/checkpoints/last.ckpt", weights_only=True)["epoch"] == 1


def test_a_partial_file_of_a_killed_save_is_removed_at_the_next_start(runs):
    assert not list(runs["run"].glob("**/*.partial"))


def test_auto_resume_without_a_checkpoint_starts_a_new_version(repo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(repo_root / TINY), "--auto_resume", "true"], run=False)
    assert cli.trainer.log_dir == str(Path("runs/alignment/tiny/version_0"))
    assert cli.trainer.checkpoint_callback.dirpath.endswith("runs/alignment/tiny/version_0/checkpoints")


def _stage_checkpoint(path: Path, stage: str, record: bool = True) -> Path:
    contents = {CHECKPOINT_KEY: {"stage": stage, "version": "0.1.0"}} if record else \
        {"hyper_parameters": {"_class_path": stage}}
    torch.save({"state_dict": {}, **contents}, path)
    return path


ALL_STAGES = sorted(f"{module}.{name}" for name, module in STAGES.items())


@pytest.mark.parametrize("written_by", ALL_STAGES)
def test_a_checkpoint_of_another_stage_is_refused_for_every_pair(tmp_path, written_by):
    path = _stage_checkpoint(tmp_path / "last.ckpt", written_by)
    legacy = _stage_checkpoint(tmp_path / "legacy.ckpt", written_by, record=False)
    for model in ALL_STAGES:
        for checkpoint in (path, legacy):
            if model == written_by:
                check_checkpoint_matches_config(checkpoint, model)
            else:
                with pytest.raises(ValueError, match=rf"written by stage {written_by}.*this run's model is {model}"):
                    check_checkpoint_matches_config(checkpoint, model)


def test_the_cli_refuses_another_stages_checkpoint_before_building_anything(repo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _stage_checkpoint(tmp_path / "ac.ckpt", "prismrl.lightning_modules.actor_critic.ActorCriticModule")
    with pytest.raises(ValueError, match="ActorCriticModule.*this run's model is .*AlignmentModule"):
        build_cli(["fit", "--config", str(repo_root / TINY), "--ckpt_path", str(path)])
    assert not (tmp_path / "runs").exists()


def test_a_bad_config_ends_with_the_real_message_in_a_few_short_lines(repo_root, tmp_path):
    command = [sys.executable, "-m", "prismrl.cli", "fit", "--config", str(repo_root / TINY),
               "--model.init_args.contrastive", "clipp"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-2:]
    assert "contrastive: expected one of ['clip', 'siglip'], received 'clipp'" in last[0]
    assert "--debug" in last[1] and "Namespace(" not in done.stderr and len(done.stderr) < 2000
    debug = subprocess.run([*command, "--debug"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_short_class_names_work_and_fit_help_lists_the_stages(repo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(repo_root / TINY), "--model", "AlignmentModule",
                     "--data", "DigitsDataModule"], run=False)
    assert type(cli.model).__name__ == "AlignmentModule" and type(cli.datamodule).__name__ == "DigitsDataModule"
    with pytest.raises(SystemExit):
        build_cli(["fit", "--help"])
    printed = capsys.readouterr().out
    assert [name for name in STAGES if name not in printed] == [], printed[:3000]


def test_test_and_predict_use_the_validation_set_and_write_predictions(repo_root, runs, monkeypatch):
    monkeypatch.chdir(runs["workdir"])
    config = ["--config", str(repo_root / TINY), "--trainer.limit_test_batches", "1", "--trainer.limit_predict_batches", "2",
              "--ckpt_path", "last"]
    tested = build_cli(["test", *config])
    assert "test/mean_recall@1" in tested.trainer.callback_metrics
    build_cli(["predict", *config])
    predictions = torch.load(runs["run"] / "predict/version_0/predictions.pt", weights_only=True)
    assert len(predictions) == 2 and predictions[0]["image"].shape == (32, 64) and predictions[0]["text"].shape == (32, 64)
    assert (runs["run"] / "test/version_0/metrics.csv").is_file()


def test_a_verb_the_stage_lacks_is_named_with_the_verbs_it_has(repo_root, tmp_path, monkeypatch):
    from prismrl.apps.verbs import prepare_evaluation_verb, supported_verbs
    from prismrl.lightning_modules.masked_lm import MaskedLMModule

    assert supported_verbs(build_cli(["--config", str(repo_root / TINY)], run=False).model) == \
        ["fit", "validate", "test", "predict"]
    model = MaskedLMModule.__new__(MaskedLMModule)  # only its class matters: no weights are built
    with pytest.raises(ValueError, match=r"prismrl test: stage MaskedLMModule supports fit, validate; it has no test_step"):
        prepare_evaluation_verb("test", model, None, None)
    from prismrl.lightning_modules.generator_ppo import GeneratorPPOModule
    from prismrl.lightning_modules.grpo import GRPOModule

    for stage in (GRPOModule, GeneratorPPOModule):  # rollout stages predict completions; they have no test metrics
        assert supported_verbs(stage.__new__(stage)) == ["fit", "validate", "predict"]
        with pytest.raises(ValueError, match=rf"prismrl test: stage {stage.__name__} supports fit, validate, predict;"):
            prepare_evaluation_verb("test", stage.__new__(stage), None, None)


def test_a_checkpoint_save_killed_midway_leaves_the_previous_file_and_a_partial_one(tmp_path):
    from prismrl.apps.runs import atomic_checkpoint_io as _atomic_checkpoint_io
    from prismrl.apps.runs import clean_partial_saves

    io = _atomic_checkpoint_io()
    path = tmp_path / "version_0/checkpoints/last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    assert torch.load(path, weights_only=True)["state_dict"]["w"].sum() == 3
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "x": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["state_dict"]["w"].sum() == 3  # the previous checkpoint is intact
    assert clean_partial_saves(tmp_path) == [path.with_name("last.ckpt.partial")]
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_max_steps_run_shows_its_step_budget_in_the_progress_bar(repo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(repo_root / TINY), "--trainer.max_epochs", "-1", "--trainer.max_steps", "7",
                     "--trainer.enable_progress_bar", "true"], run=False)
    bar = cli.trainer.progress_bar_callback
    bar.setup(cli.trainer, cli.model, "fit")  # what the fit loop does first: the bar gets its trainer
    assert type(bar).__name__ == "StepAwareRichProgressBar" and bar.trainer.max_epochs == -1
    assert bar._get_train_description(0).strip() == "Epoch 0 (max_steps 7)"
