"""Staged training by epoch: freeze modules, unfreeze them into new optimizer groups, set attributes.

Works with any LightningModule: modules are named by dotted attribute paths (``text_encoder``,
``fusion.layers.0``), attributes by dotted paths too (``mode``). In YAML::

    - class_path: prismrl.callbacks.staged_unfreezing.StagedUnfreezing
      init_args:
        stages:
          - {epoch: 0, frozen: [text_encoder, vision_encoder]}
          - {epoch: 2, unfreeze: [text_encoder, vision_encoder], lr: 1.0e-5}
          - {epoch: 4, set: {mode: combined}}

Behaviour (built on Lightning's ``BaseFinetuning``):

- ``setup`` (before ``configure_optimizers``) checks every name, dry-runs every ``set`` through the
  module's setters (assign, then assign the old value back), and freezes the epoch-0 ``frozen`` modules,
  so ``configure_optimizers`` must only take parameters with ``requires_grad`` (prismrl's modules do).
  Frozen means frozen: BatchNorm affine parameters too, and BatchNorm stops tracking running statistics.
- At the start of epoch e, every stage with ``epoch <= e`` not yet applied takes effect in order:
  ``frozen`` -> requires_grad False, ``unfreeze`` -> True, ``set`` -> setattr. (After a resume Lightning
  may skip ``on_train_epoch_start``; the first ``on_train_batch_start`` of the epoch then does this.)
- Unfrozen parameters that no optimizer group holds (compared by identity, not by value as
  ``BaseFinetuning.filter_on_optimizer`` does, which drops e.g. a LayerNorm weight equal to another one)
  become new groups: a decayed group (matrices) and an undecayed one (biases, norms) with
  ``initial_lr = stage.lr`` (default: the first group's initial lr) and the first group's weight decay.
- Schedulers: the new groups are appended to the scheduler's per-group lists (``base_lrs``,
  ``lr_lambdas``, ``min_lrs``). A ``LambdaLR`` (prismrl's warmup-cosine) applies its first group's factor:
  the new group's lr is ``stage.lr * factor(step)`` from the current step on; it joins the running
  schedule and does not restart the warmup. Chainable schedulers (StepLR, ...) scale the group from its
  given lr on.
- Resume: the checkpoint holds the optimizer's groups by parameter name (``BaseFinetuning.state_dict``)
  and the last epoch whose stages took effect. ``on_fit_start`` re-applies those stages (requires_grad,
  attributes) and rebuilds the param groups before Lightning loads the optimizer state (Adam moments of
  the new groups included) and the scheduler state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from prismrl.optim import decay_groups

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """What happens at the start of ``epoch``: freeze, unfreeze (new group with ``lr``), set attributes."""

    epoch: int
    frozen: list[str] = field(default_factory=list)
    unfreeze: list[str] = field(default_factory=list)
    lr: float | None = None
    set: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.epoch, bool) or not isinstance(self.epoch, int) or self.epoch < 0:
            raise ValueError(f"Stage.epoch: expected an int >= 0, received {self.epoch!r}")
        for name in ("frozen", "unfreeze"):
            paths = getattr(self, name)
            if isinstance(paths, str) or not all(isinstance(p, str) and p for p in paths):
                raise TypeError(f"Stage.{name}: expected a list of non-empty module paths, received {paths!r}")
        both = sorted(set(self.frozen) & set(self.unfreeze))
        if both:
            raise ValueError(f"Stage(epoch={self.epoch}): {both} are both frozen and unfrozen")
        if self.lr is not None and (not self.unfreeze or self.lr <= 0):
            raise ValueError(f"Stage(epoch={self.epoch}).lr: expected a positive lr together with `unfreeze`, received lr={self.lr!r}")
        if not isinstance(self.set, dict) or not all(isinstance(k, str) and k for k in self.set):
            raise TypeError(f"Stage.set: expected a dict of attribute paths to values, received {self.set!r}")


def parse_stages(stages: list[Stage | dict[str, Any]]) -> list[Stage]:
    """Stages from dataclasses or dicts, with strictly increasing epochs."""
    parsed = [s if isinstance(s, Stage) else Stage(**s) for s in stages]
    epochs = [s.epoch for s in parsed]
    if not parsed or epochs != sorted(set(epochs)):
        raise ValueError(f"stages: expected at least one stage with strictly increasing epochs, received epochs {epochs}")
    return parsed


def resolve_module(pl_module: nn.Module, path: str, where: str) -> nn.Module:
    """``pl_module.<path>`` as a module, or a ValueError listing the top-level children."""
    try:
        return pl_module.get_submodule(path)
    except AttributeError:
        children = [name for name, _ in pl_module.named_children()]
        raise ValueError(
            f"StagedUnfreezing: {where}: {path!r} is not a submodule of {type(pl_module).__name__}; "
            f"available top-level children: {children}"
        ) from None


def _attribute_owner(pl_module: nn.Module, path: str, where: str) -> tuple[Any, str]:
    *parents, leaf = path.split(".")
    owner: Any = pl_module
    for part in parents:
        owner = getattr(owner, part, None)
    if owner is None or not hasattr(owner, leaf):
        raise ValueError(f"StagedUnfreezing: {where}: {type(pl_module).__name__} has no attribute {path!r}")
    return owner, leaf


def extend_scheduler(scheduler: Any, optimizer: Optimizer) -> None:
    """Make the scheduler's per-group lists cover every param group (idempotent).

    New groups get ``base_lr = group["initial_lr"]``, the first group's lambda and min lr; under a
    ``LambdaLR`` their lr becomes ``base_lr * lambda(last_epoch)`` right away.
    """
    groups = optimizer.param_groups
    base_lrs = getattr(scheduler, "base_lrs", None)
    first_new = len(groups) if base_lrs is None else len(base_lrs)
    if base_lrs is not None:
        for group in groups[len(base_lrs):]:
            base_lrs.append(group.setdefault("initial_lr", group["lr"]))
    for name in ("lr_lambdas", "min_lrs"):
        values = getattr(scheduler, name, None)
        if isinstance(values, list) and values:
            values.extend([values[0]] * (len(groups) - len(values)))
    if isinstance(scheduler, LambdaLR):
        for i in range(first_new, len(groups)):
            groups[i]["lr"] = base_lrs[i] * scheduler.lr_lambdas[i](scheduler.last_epoch)
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [group["lr"] for group in groups]


class StagedUnfreezing(BaseFinetuning):
    """Apply ``stages`` (see the module docstring) by epoch; state survives checkpoint + resume."""

    def __init__(self, stages: list[Stage]) -> None:
        super().__init__()
        self.stages = parse_stages(stages)
        self._applied_epoch = -1  # checkpointed: the last epoch whose stages took effect
        self._done: set[int] = set()  # indices of stages applied in this process

    # ----- checkpoint state -----
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "applied_epoch": self._applied_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._applied_epoch = int(state_dict.get("applied_epoch", -1))

    # ----- hooks -----
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.validate(pl_module)
        self._done.clear()
        super().setup(trainer, pl_module, stage)  # -> freeze_before_training

    def validate(self, pl_module: pl.LightningModule) -> None:
        """Check every module path and dry-run every ``set`` through the module's setters."""
        for i, stage in enumerate(self.stages):
            for kind in ("frozen", "unfreeze"):
                for path in getattr(stage, kind):
                    resolve_module(pl_module, path, f"stages[{i}].{kind}")
            for path, value in stage.set.items():
                owner, leaf = _attribute_owner(pl_module, path, f"stages[{i}].set")
                old = getattr(owner, leaf)
                try:
                    setattr(owner, leaf, value)
                except (ValueError, TypeError) as err:
                    raise ValueError(f"StagedUnfreezing: stages[{i}].set.{path}: {value!r} rejected: {err}") from err
                setattr(owner, leaf, old)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        for stage in self.stages:
            if stage.epoch == 0 and stage.frozen:
                self.freeze([resolve_module(pl_module, p, "frozen") for p in stage.frozen], train_bn=False)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restarting:
            self._apply_due(pl_module, self._applied_epoch)
        super().on_fit_start(trainer, pl_module)  # param groups by name, before the optimizer state loads
        self._extend_schedulers(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply_due(pl_module, trainer.current_epoch)
        super().on_train_epoch_start(trainer, pl_module)  # -> finetune_function per optimizer
        self._extend_schedulers(trainer)
        self._applied_epoch = trainer.current_epoch

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        # Lightning 2.6 skips on_train_epoch_start for the first epoch after resuming from a checkpoint
        # written at the end of an epoch (or mid-epoch); the epoch's stages then take effect here.
        if self._applied_epoch < trainer.current_epoch:
            self.on_train_epoch_start(trainer, pl_module)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        """Put unfrozen parameters that no group of ``optimizer`` holds into new groups."""
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        first = optimizer.param_groups[0]
        for stage in self.stages:
            if stage.epoch > epoch or not stage.unfreeze:
                continue
            named: dict[int, tuple[str, nn.Parameter]] = {}
            for path in stage.unfreeze:
                for name, param in resolve_module(pl_module, path, "unfreeze").named_parameters(prefix=path):
                    if param.requires_grad and id(param) not in held:
                        named.setdefault(id(param), (name, param))
            if not named:
                continue
            lr = stage.lr if stage.lr is not None else first.get("initial_lr", first["lr"])
            for group in decay_groups(named.values(), first.get("weight_decay", 0.0), lr):
                group["initial_lr"] = lr
                group["name"] = f"unfrozen_epoch{stage.epoch}" + ("" if group["weight_decay"] else "_no_decay")
                optimizer.add_param_group(group)
            held.update(named)
            log.info("StagedUnfreezing: epoch %d: %d tensors of %s in new param groups, lr %g", epoch, len(named), stage.unfreeze, lr)

    # ----- helpers -----
    def _apply_due(self, pl_module: pl.LightningModule, epoch: int) -> None:
        """Apply, in order, the stages with ``stage.epoch <= epoch`` not yet applied in this process."""
        for i, stage in enumerate(self.stages):
            if stage.epoch > epoch or i in self._done:
                continue
            if stage.frozen:
                self.freeze([resolve_module(pl_module, p, "frozen") for p in stage.frozen], train_bn=False)
            if stage.unfreeze:
                self.make_trainable([resolve_module(pl_module, p, "unfreeze") for p in stage.unfreeze])
            for path, value in stage.set.items():
                owner, leaf = _attribute_owner(pl_module, path, f"stages[{i}].set")
                setattr(owner, leaf, value)
            self._done.add(i)
            log.info("StagedUnfreezing: applied stage %d (epoch %d): frozen=%s unfreeze=%s set=%s",
                     i, stage.epoch, stage.frozen, stage.unfreeze, stage.set)

    @staticmethod
    def _extend_schedulers(trainer: pl.Trainer) -> None:
        for optimizer in trainer.optimizers:
            for config in trainer.lr_scheduler_configs:
                if getattr(config.scheduler, "optimizer", None) is optimizer:
                    extend_scheduler(config.scheduler, optimizer)


__all__ = ["Stage", "StagedUnfreezing", "extend_scheduler", "parse_stages", "resolve_module"]
