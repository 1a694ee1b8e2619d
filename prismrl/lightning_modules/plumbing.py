"""Plumbing every stage shares, and the one place that touches Lightning's private attributes.

- ``StageModule``: the base of every stage. ``on_train_start`` restores checkpointed dataloader positions
  that Lightning would drop (exact mid-epoch resume); with automatic optimization the gradient norm is
  clipped to ``optimizer_settings.max_grad_norm`` unless the Trainer sets ``gradient_clip_val``;
  ``manual_optimizer_step`` is the zero-grad / backward / clip / step sequence of manual optimization.
  A ``NumericalGuard`` joins the callbacks unless the Trainer has one. Checkpoints record the stage that
  wrote them (``checkpoint["prismrl"] = {"stage": "<module>.<Class>", "version": ...}``); loading one
  written by another stage is an error that names both.
- ``built_from_config``: whether LightningCLI (or ``load_from_checkpoint`` of its checkpoints) is
  instantiating the module right now.
"""

from __future__ import annotations

from typing import Any

from lightning import LightningModule, Trainer
from torch import Tensor
from torch.optim import Optimizer

import prismrl
from prismrl.callbacks.numerical_guard import NumericalGuard
from prismrl.optim import OptimizerSettings
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


class StageModule(LightningModule):
    """A LightningModule with prismrl's shared plumbing; subclasses set ``self.optimizer_settings``."""

    optimizer_settings: OptimizerSettings

    def on_train_start(self) -> None:
        restore_pending_dataloader_states(self.trainer)

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` (FSDP2): shard each transformer block, then each child model
        (``prismrl.backbones.sharding.shard_stage`` with ``self.sharding``, a ``ShardingSettings``; children named in
        ``self.unsharded_children`` stay whole); a no-op under every other strategy."""
        mesh = self.device_mesh
        if mesh is None:
            return
        from prismrl.backbones.sharding import ShardingSettings, shard_stage

        if mesh.ndim > 1 and mesh["tensor_parallel"].size() > 1:
            raise ValueError(f"trainer.strategy: tensor_parallel_size must be 1 (prismrl shards with FSDP2 only), "
                             f"received {mesh['tensor_parallel'].size()}")
        dp_mesh = mesh["data_parallel"] if mesh.ndim > 1 else mesh
        shard_stage(self, dp_mesh, getattr(self, "sharding", None) or ShardingSettings(), self.device,
                    skip=getattr(self, "unsharded_children", ()))

    def configure_callbacks(self) -> list:
        has_guard = self._trainer is not None and any(isinstance(c, NumericalGuard) for c in self.trainer.callbacks)
        return [] if has_guard else [NumericalGuard()]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Subclasses that override this call ``super().on_save_checkpoint(checkpoint)``."""
        checkpoint[CHECKPOINT_KEY] = {"stage": stage_name(type(self)), "version": prismrl.__version__}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Subclasses that override this call ``super().on_load_checkpoint(checkpoint)`` first."""
        check_checkpoint_stage(checkpoint, type(self))

    def configure_gradient_clipping(self, optimizer: Optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if gradient_clip_val is None:
            gradient_clip_val, gradient_clip_algorithm = self.optimizer_settings.max_grad_norm, "norm"
        if gradient_clip_val:
            self._clip(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _clip(self, optimizer: Optimizer, value: float, algorithm: str | None) -> None:
        """Lightning's clipping, or, when FSDP2 shards the model (``device_mesh`` set) and clips by norm,
        ``prismrl.backbones.sharding.clip_grad_norm`` (full-tensor norm over sharded and replicated gradients)."""
        if self.device_mesh is None or algorithm not in (None, "norm"):
            self.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=algorithm)
            return
        from prismrl.backbones.sharding import clip_grad_norm

        clip_grad_norm([p for group in optimizer.param_groups for p in group["params"]], value)

    def manual_optimizer_step(self, loss: Tensor, optimizer: Optimizer, max_grad_norm: float | None = None) -> None:
        """zero_grad, backward (precision- and strategy-aware), clip the global norm to ``max_grad_norm``
        (default ``optimizer_settings.max_grad_norm``; None = no clipping), step."""
        max_grad_norm = self.optimizer_settings.max_grad_norm if max_grad_norm is None else max_grad_norm
        optimizer.zero_grad()
        self.manual_backward(loss)
        if max_grad_norm:
            self._clip(optimizer, max_grad_norm, "norm")
        optimizer.step()

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


class RolloutStageModule(StageModule):
    """A stage that samples rollouts from its policy: ``rollout_engine`` is built from ``rollout_settings``,
    ``policy``, ``adapter`` and ``eos_ids`` on first use, once per module (``prismrl.policy.rollout``)."""

    _engine: RolloutEngine | None = None

    @property
    def rollout_engine(self) -> RolloutEngine:
        if self._engine is None:
            self._engine = build_rollout_engine(self.rollout_settings, self.policy, self.adapter, self.eos_ids)
        return self._engine
