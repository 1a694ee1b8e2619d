"""Plumbing every stage shares, and the one place that touches Lightning's private attributes.

- ``StageModule``: the base of every stage. ``on_train_start`` restores checkpointed dataloader positions
  that Lightning would drop (exact mid-epoch resume); with automatic optimization the gradient norm is
  clipped to ``optimizer_settings.max_grad_norm`` unless the Trainer sets ``gradient_clip_val``;
  ``manual_optimizer_step`` is the zero-grad / backward / clip / step sequence of manual optimization.
  A ``NumericalGuard`` joins the callbacks unless the Trainer has one. Checkpoints record the stage that
  wrote them (``checkpoint["prismrl"] = {"stage": "<module>.<Class>", "version": ..., "world_size": ...}``);
  loading one written by another stage is an error that names both, and so is resuming a fit under another
  world size (``check_checkpoint_world_size``). Every stage's ``__init__`` takes ``sharding`` (FSDP2 settings).
  ``log`` skips per-step training values nothing would read this step (``seen_this_step``): each
  ``self.log`` costs about 1 ms of CPU in Lightning's result collection.
- Pretrained frozen weights stay out of checkpoints: a stage names the children whose frozen weights its
  constructor rebuilds from their source (``rebuilt_frozen_children``); checkpoints then hold the trainable weights
  (LoRA adapters, heads) and record each source with a checksum of what was left out, and loading refills those
  weights from the freshly built model after checking the checksum (``frozen_pretrained_names``). Extra state written
  beside a left-out weight (the int8 scales of a bitsandbytes 8-bit layer) is left out and rebuilt with it. The
  helpers live in ``prismrl.backbones.frozen_weights``.
- ``built_from_config``: whether LightningCLI (or ``load_from_checkpoint`` of its checkpoints) is
  instantiating the module right now.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor
from torch.optim import Optimizer

import prismrl
from prismrl.backbones.frozen_weights import (
    frozen_pretrained_names,
    unregistered_keys_beside,
    weights_checksum,
)
from prismrl.backbones.sharding import ShardingSettings
from prismrl.callbacks.numerical_guard import NumericalGuard
from prismrl.optim import OptimizerSettings
from prismrl.policy.completion_prediction import CompletionPrediction
from prismrl.policy.rollout import RolloutEngine, build_rollout_engine

CHECKPOINT_KEY = "prismrl"


def stage_name(module_class: type) -> str:
    """``"<module>.<Class>"`` of a stage class, the name checkpoints record."""
    return f"{module_class.__module__}.{module_class.__qualname__}"


def check_checkpoint_stage(checkpoint: dict[str, Any], module_class: type, where: str = "ckpt_path") -> None:
    """ValueError naming both stages when ``checkpoint`` was written by another stage than ``module_class``.

    Checkpoints without the record (written by another program) pass: there is nothing to compare.
    """
    record = checkpoint.get(CHECKPOINT_KEY) or {}
    written_by, expected = record.get("stage"), stage_name(module_class)
    if written_by is not None and written_by != expected:
        raise ValueError(f"{where}: the checkpoint was written by stage {written_by} (prismrl "
                         f"{record.get('version', '?')}); this run's model is {expected}: give a checkpoint of that stage")


def check_checkpoint_world_size(checkpoint: dict[str, Any], world_size: int, where: str = "ckpt_path") -> None:
    """ValueError naming both world sizes when ``checkpoint`` was written by a run of another number of processes.

    Resuming under another world size cannot continue exactly: the dataloaders' saved positions and every rank's
    RNG states belong to the old split of the data across ranks, and the run would silently train on other
    batches. Checkpoints without the record (older ones, other programs) pass.
    """
    written = (checkpoint.get(CHECKPOINT_KEY) or {}).get("world_size")
    if written is not None and int(written) != int(world_size):
        raise ValueError(f"{where}: the checkpoint was written by a run of {written} processes (world size: "
                         f"trainer.devices x trainer.num_nodes); this run has {world_size}, and resuming under another "
                         f"world size would restore dataloader positions and per-rank RNG states of another data split. "
                         f"Resume with {written} processes, or start a new run from its weights (load the state dict "
                         f"instead of ckpt_path)")


def built_from_config() -> bool:
    """True while LightningCLI (or ``load_from_checkpoint`` of its checkpoints) instantiates the module.

    Then ``save_hyperparameters`` records the injected components as their class_path config; a module built in
    Python should ignore its nn.Module arguments instead, whose weights the state dict already holds.
    """
    from lightning.pytorch.core.mixins import hparams_mixin

    given = getattr(hparams_mixin, "_given_hyperparameters", None)
    return given is not None and given.get() is not None


def restore_pending_dataloader_states(trainer: Trainer) -> None:
    """Hand checkpointed dataloader states to the train loader when Lightning did not.

    Lightning restores stateful loaders only when the fit loop creates its combined loader after the
    checkpoint was read. ``trainer.estimated_stepping_batches`` (called by ``configure_optimizers`` to size
    a schedule) creates it earlier, and the saved position would be dropped silently, so a run resumed
    mid-epoch would start the epoch over. ``StageModule.on_train_start`` applies the pending states.
    """
    fit_loop = trainer.fit_loop
    if getattr(fit_loop, "_combined_loader_states_to_load", None) and fit_loop._combined_loader is not None:
        fit_loop._load_combined_loader_states()


def with_sharding_argument(init: Callable) -> Callable:
    """``init`` (a stage's ``__init__``) taking one more keyword-only argument, ``sharding: ShardingSettings``, set as
    ``self.sharding`` after ``init`` ran (a mapping is read as ``ShardingSettings(**mapping)``). The argument joins
    the signature, so every stage's YAML takes ``model.init_args.sharding`` without each stage declaring it.
    An ``init`` that declares ``sharding`` itself is returned unchanged."""
    signature = inspect.signature(init)
    if "sharding" in signature.parameters:
        return init
    params = list(signature.parameters.values())
    extra = inspect.Parameter("sharding", inspect.Parameter.KEYWORD_ONLY, default=ShardingSettings(),
                              annotation=ShardingSettings)
    params.insert(len(params) - int(bool(params) and params[-1].kind is inspect.Parameter.VAR_KEYWORD), extra)

    extended = signature.replace(parameters=params)

    @functools.wraps(init)
    def __init__(self, *args: Any, sharding: ShardingSettings | Mapping | None = None, **kwargs: Any) -> None:
        if isinstance(sharding, Mapping):
            sharding = ShardingSettings(**sharding)
        if sharding is not None and not isinstance(sharding, ShardingSettings):
            raise TypeError(f"sharding: expected a ShardingSettings or a mapping of its fields, received "
                            f"{type(sharding).__name__}")
        __init__.__signature__ = signature  # save_hyperparameters reads the arguments of init's own frame
        try:
            init(self, *args, **kwargs)
        finally:
            __init__.__signature__ = extended
        if sharding is not None:  # None: a subclass's __init__ calling this one sets it after
            self.sharding = sharding
            for hparams in (getattr(self, "_hparams", None), getattr(self, "_hparams_initial", None)):
                if hparams is not None and "sharding" not in hparams:  # built in Python: reloads with it
                    hparams["sharding"] = sharding

    __init__.__signature__ = extended
    return __init__


def seen_this_step(module: LightningModule, name: str, options: Mapping[str, Any]) -> bool:
    """Whether a value ``module.log(name, ..., **options)`` records now can be read by anyone: always, except a
    per-step value (no ``on_epoch``) of an automatic-optimization ``training_step`` on a step where Lightning writes
    to no logger (none configured, or not a ``log_every_n_steps`` step), that is not the last batch of the epoch or of the fit (callback
    metrics stay current for ``on_train_epoch_end`` readers and after ``fit``), not shown in an enabled progress
    bar and not monitored by a callback (``ModelCheckpoint``/``EarlyStopping`` ``monitor``)."""
    trainer = module._trainer
    if (trainer is None or not module.automatic_optimization or module._current_fx_name != "training_step"
            or options.get("on_epoch") or options.get("on_step") is False):
        return True
    if trainer.loggers and trainer._logger_connector.should_update_logs:
        return True
    progress = trainer.fit_loop.epoch_loop.batch_progress  # the last batch, also of a limit_train_batches epoch
    if progress.is_last_batch or progress.current.ready >= trainer.num_training_batches:
        return True
    if 0 <= trainer.max_steps <= trainer.global_step + 1:
        return True
    if options.get("prog_bar") and trainer.progress_bar_callback is not None:
        return True
    return any(getattr(callback, "monitor", None) == name for callback in trainer.callbacks)


class StageModule(LightningModule):
    """A LightningModule with prismrl's shared plumbing; subclasses set ``self.optimizer_settings``.

    Every subclass's ``__init__`` also takes ``sharding`` (``with_sharding_argument``): the FSDP2 wrap policy,
    mixed precision, activation checkpointing and resharding that ``configure_model`` applies.
    """

    optimizer_settings: OptimizerSettings
    sharding: ShardingSettings = ShardingSettings()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = with_sharding_argument(cls.__dict__["__init__"])

    def rebuilt_frozen_children(self) -> tuple[str, ...]:
        """Children whose frozen pretrained weights checkpoints leave out (``frozen_pretrained_names``); none by
        default: checkpoints hold every weight."""
        return ()

    def on_train_start(self) -> None:
        restore_pending_dataloader_states(self.trainer)
        if self.device_mesh is not None:  # FSDP2: sharded checkpoints need every parameter's optimizer state
            from prismrl.backbones.sharding import fill_optimizer_states

            for optimizer in self.trainer.optimizers:
                fill_optimizer_states(optimizer)

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` (FSDP2): shard each transformer block, then each child model
        (``prismrl.backbones.sharding.shard_stage`` with ``self.sharding``, a ``ShardingSettings``; children named in
        ``self.unsharded_children`` stay whole); a no-op under every other strategy."""
        mesh = self.device_mesh
        if mesh is None:
            return
        from prismrl.backbones.sharding import shard_stage

        if mesh.ndim > 1 and mesh["tensor_parallel"].size() > 1:
            raise ValueError(f"trainer.strategy: tensor_parallel_size must be 1 (prismrl shards with FSDP2 only), "
                             f"received {mesh['tensor_parallel'].size()}")
        dp_mesh = mesh["data_parallel"] if mesh.ndim > 1 else mesh
        shard_stage(self, dp_mesh, self.sharding, self.device,
                    skip=getattr(self, "unsharded_children", ()))

    def configure_callbacks(self) -> list:
        has_guard = self._trainer is not None and any(isinstance(c, NumericalGuard) for c in self.trainer.callbacks)
        return [] if has_guard else [NumericalGuard()]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Subclasses that override this call ``super().on_save_checkpoint(checkpoint)``."""
        checkpoint[CHECKPOINT_KEY] = {"stage": stage_name(type(self)), "version": prismrl.__version__}
        if self._trainer is not None:
            checkpoint[CHECKPOINT_KEY]["world_size"] = self.trainer.world_size
        children = self.rebuilt_frozen_children()
        if not children or self._sharded():  # distributed checkpoints: their loader expects every key
            return
        frozen = frozen_pretrained_names(self, children)
        state = checkpoint["state_dict"]
        left_out = sorted(k for k in frozen if k in state)
        checkpoint[CHECKPOINT_KEY]["frozen_weights"] = {
            "children": list(children), "sources": sorted(set(frozen.values())), "count": len(left_out),
            "checksum": weights_checksum([state[k] for k in left_out])}
        left_out_extras = unregistered_keys_beside(self, left_out, state)  # bitsandbytes int8 scales (SCB), ...
        checkpoint["state_dict"] = {k: v for k, v in state.items() if k not in frozen and k not in left_out_extras}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Subclasses that override this call ``super().on_load_checkpoint(checkpoint)`` first."""
        check_checkpoint_stage(checkpoint, type(self))
        if self._trainer is not None and self.trainer.state.fn == "fit":  # evaluating under another world size is fine
            check_checkpoint_world_size(checkpoint, self.trainer.world_size)
        record = (checkpoint.get(CHECKPOINT_KEY) or {}).get("frozen_weights")
        if record:
            self._refill_frozen_weights(checkpoint, record)

    def _sharded(self) -> bool:
        from prismrl.backbones.sharding import is_sharded

        return is_sharded(self)

    def _refill_frozen_weights(self, checkpoint: dict[str, Any], record: dict[str, Any]) -> None:
        """Put this model's frozen pretrained weights into ``checkpoint["state_dict"]``, after checking they are the
        ones the checkpoint was trained on."""
        state, own = checkpoint["state_dict"], self.state_dict()
        missing = sorted(k for k in frozen_pretrained_names(self, record["children"]) if k not in state and k in own)
        found = weights_checksum([own[k] for k in missing]) if not self._sharded() else record["checksum"]
        expected = record["checksum"]
        if len(missing) != record["count"] or not all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-3)
                                                      for a, b in zip(found, expected)):
            raise ValueError(f"ckpt_path: the checkpoint leaves out {record['count']} frozen pretrained weights of "
                             f"{', '.join(record['children'])} (checksum {expected}) to be reloaded from "
                             f"{', '.join(record['sources'])}; this model has {len(missing)} such weights (checksum "
                             f"{found}), received other base weights: build the model from the same source")
        state.update({k: own[k] for k in missing})

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """``LightningModule.log``, minus per-step training values that no logger, progress bar, monitoring
        callback or end-of-epoch reader would see (``seen_this_step``)."""
        if args or seen_this_step(self, name, kwargs):
            super().log(name, value, *args, **kwargs)

    def configure_gradient_clipping(self, optimizer: Optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if gradient_clip_val is None:
            gradient_clip_val, gradient_clip_algorithm = self.optimizer_settings.max_grad_norm, "norm"
        if gradient_clip_val:
            self._clip(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def remember_grad_norm(self, optimizer: Optimizer, norm: Tensor) -> None:
        """The global gradient norm over ``optimizer``'s parameters, just computed on the gradients this step is
        about to clip (``NumericalGuard``); the next norm clipping of this optimizer uses it once."""
        self._known_grad_norm = (optimizer, norm)

    def _clip(self, optimizer: Optimizer, value: float, algorithm: str | None) -> None:
        """Lightning's clipping, or, when FSDP2 shards the model (``device_mesh`` set) and clips by norm,
        ``prismrl.backbones.sharding.clip_grad_norm`` (full-tensor norm over sharded and replicated gradients).
        Clipping by norm with the norm already known for these gradients (``remember_grad_norm``) scales them
        by min(1, value / (norm + 1e-6)) without computing it again."""
        known, self._known_grad_norm = getattr(self, "_known_grad_norm", None), None
        if algorithm in (None, "norm") and known is not None and known[0] is optimizer and self.device_mesh is None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grads_with_norm_(params, value, known[1])
            return
        if self.device_mesh is None or algorithm not in (None, "norm"):
            self.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=algorithm)
            return
        from prismrl.backbones.sharding import clip_grad_norm

        clip_grad_norm([p for group in optimizer.param_groups for p in group["params"]], value)

    def manual_optimizer_step(self, loss: Tensor, optimizer: Optimizer, max_grad_norm: float | None = None) -> None:
        """zero_grad, backward (precision- and strategy-aware), clip the global norm to ``max_grad_norm``
        (default ``optimizer_settings.max_grad_norm``; None = no clipping), step. Through Lightning's optimizer
        the clipping runs in ``on_before_optimizer_step``, which the precision plugin calls after it unscales
        fp16 gradients (``16-mixed``'s GradScaler), so the norm is that of the true gradients."""
        max_grad_norm = self.optimizer_settings.max_grad_norm if max_grad_norm is None else max_grad_norm
        optimizer.zero_grad()
        self._known_grad_norm = None  # a norm remembered for earlier gradients never scales these
        self.manual_backward(loss)
        if max_grad_norm and not isinstance(optimizer, LightningOptimizer):  # no precision plugin in between
            self._clip(optimizer, max_grad_norm, "norm")
            max_grad_norm = None
        self._pending_clip = max_grad_norm or None
        try:
            optimizer.step()
        finally:
            self._pending_clip = None

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        if getattr(self, "_pending_clip", None):  # a manual step's clipping, on unscaled gradients
            self._clip(optimizer, self._pending_clip, "norm")

    def manual_optimizer_steps(self, passes: int, minibatch_size: int | None, rows_per_sample: int = 1) -> int:
        """Optimizer steps of a manual-optimization fit, to size the schedule: ``trainer.max_steps`` when set, else
        batches x passes x ceil(batch_size * rows_per_sample / minibatch_size) (one step per batch and pass when
        minibatch_size is None)."""
        batches = int(self.trainer.estimated_stepping_batches)  # loads the train loader
        if self.trainer.max_steps > 0:
            return self.trainer.max_steps
        batch_size = getattr(self.trainer.train_dataloader, "batch_size", None)
        if not isinstance(batch_size, int):
            raise ValueError("trainer.max_steps: set it (optimizer steps) when the train loader has no int batch_size")
        per_batch = 1 if minibatch_size is None else -(-batch_size * rows_per_sample // minibatch_size)
        return max(1, batches * passes * per_batch)


class RolloutStageModule(CompletionPrediction, StageModule):
    """A stage that samples rollouts from its policy: ``rollout_engine`` is built from ``rollout_settings``,
    ``policy``, ``adapter`` and ``eos_ids`` on first use, once per module (``prismrl.policy.rollout``);
    ``predict_step`` writes completions for prompts (``prismrl.policy.completion_prediction``)."""

    _engine: RolloutEngine | None = None

    @property
    def rollout_engine(self) -> RolloutEngine:
        if self._engine is None:
            self._engine = build_rollout_engine(self.rollout_settings, self.policy, self.adapter, self.eos_ids)
        return self._engine
