"""Hyperparameter saving shared by the stage modules."""

from __future__ import annotations


def built_from_config() -> bool:
    """True while LightningCLI (or ``load_from_checkpoint`` of its checkpoints) instantiates the module.

    Then ``save_hyperparameters`` records the injected components as their class_path config; a module built in
    Python should ignore its nn.Module arguments instead, whose weights the state dict already holds.
    """
    from lightning.pytorch.core.mixins import hparams_mixin

    given = getattr(hparams_mixin, "_given_hyperparameters", None)
    return given is not None and given.get() is not None
