"""Encoders initialized from the towers of an ``AlignmentModule`` checkpoint (``alignment_checkpoint``).

An alignment checkpoint holds ``image_tower.*`` / ``text_tower.*`` (/ ``audio_tower.*``) weights, each an
``EmbeddingTower`` (encoder -> pooling -> projection). A later stage loads one tower into a module of its own:
the whole tower (a module with ``forward_with_tokens`` and ``encoder``) or its bare encoder (then only the
tower's ``encoder.*`` weights are used). Every parameter must exist on both sides with the same shape, and the
checkpoint must have been written by ``AlignmentModule`` (checkpoints without prismrl's stage record pass);
anything else is a ValueError naming ``alignment_checkpoint``, the tower and the first mismatches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from prismrl.checkpoints import load_checkpoint

FIELD = "alignment_checkpoint"
ALIGNMENT_STAGE = "prismrl.lightning_modules.alignment.AlignmentModule"
TOWER_PREFIXES = {"image": "image_tower.", "text": "text_tower.", "audio": "audio_tower."}


def is_tower(module: nn.Module) -> bool:
    """Whether ``module`` is an ``EmbeddingTower``-like module (``forward_with_tokens`` + an ``encoder``)."""
    return callable(getattr(module, "forward_with_tokens", None)) and isinstance(getattr(module, "encoder", None), nn.Module)


def alignment_weights(checkpoint: str | Path) -> dict[str, Tensor]:
    """The state dict of an ``AlignmentModule`` checkpoint file (weights only; its stage record checked)."""
    path = Path(checkpoint)
    state: dict[str, Any] = load_checkpoint(path, field=FIELD)
    written_by = (state.get("prismrl") or {}).get("stage")
    if written_by is not None and written_by != ALIGNMENT_STAGE:
        raise ValueError(f"{FIELD}: '{path}' was written by stage {written_by}; expected a checkpoint of "
                         f"{ALIGNMENT_STAGE} (the alignment stage's towers)")
    return state.get("state_dict", state)


def load_aligned_tower(module: nn.Module, checkpoint: str | Path, tower: str = "image",
                       target: str = "vision_encoder") -> None:
    """Load the ``tower`` ("image" / "text" / "audio") of the alignment checkpoint file ``checkpoint`` into
    ``module`` (named ``target`` in errors); see the module docstring."""
    _load_tower(module, alignment_weights(checkpoint), tower, target, f"'{Path(checkpoint)}'")


def _load_tower(module: nn.Module, weights: dict[str, Tensor], tower: str, target: str, where: str) -> None:
    if tower not in TOWER_PREFIXES:
        raise ValueError(f"tower: expected one of {sorted(TOWER_PREFIXES)}, received {tower!r}")
    prefix = TOWER_PREFIXES[tower]
    found = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    if not found:
        raise ValueError(f"{FIELD}: {where} holds no '{prefix}*' weights; expected a checkpoint written by "
                         f"AlignmentModule with a {tower} tower")
    if not is_tower(module):
        found = {k[len("encoder."):]: v for k, v in found.items() if k.startswith("encoder.")}
    own = module.state_dict()
    mismatched = [f"{k}: {tuple(found[k].shape)} in the checkpoint, {tuple(own[k].shape)} in {target}"
                  for k in own if k in found and found[k].shape != own[k].shape]
    missing, unexpected = sorted(own.keys() - found.keys()), sorted(found.keys() - own.keys())
    if mismatched or missing or unexpected:
        raise ValueError(
            f"{FIELD}: the {tower} tower in {where} does not match {target} ({type(module).__name__}); build "
            f"{target} with the alignment run's sizes. Shape mismatches: {mismatched[:3]}; missing in the "
            f"checkpoint: {missing[:3]}; not in {target}: {unexpected[:3]}"
        )
    module.load_state_dict(found)


def load_aligned_vision(vision_encoder: nn.Module, checkpoint: str | Path) -> None:
    """Load the image tower of an ``AlignmentModule`` checkpoint into ``vision_encoder`` (a tower or its encoder)."""
    load_aligned_tower(vision_encoder, checkpoint, "image", "vision_encoder")


def load_aligned_encoders(checkpoint: str | Path, **targets: nn.Module | None) -> None:
    """Load several towers from one checkpoint read: ``vision_encoder=`` gets the image tower, ``text_encoder=``
    the text tower, ``audio_encoder=`` the audio tower (None targets are skipped)."""
    towers = {"vision_encoder": "image", "text_encoder": "text", "audio_encoder": "audio"}
    unknown = sorted(set(targets) - set(towers))
    if unknown:
        raise TypeError(f"load_aligned_encoders: expected targets among {sorted(towers)}, received {unknown}")
    weights = alignment_weights(checkpoint)
    for target, module in targets.items():
        if module is not None:
            _load_tower(module, weights, towers[target], target, f"'{Path(checkpoint)}'")


__all__ = ["ALIGNMENT_STAGE", "TOWER_PREFIXES", "alignment_weights", "is_tower", "load_aligned_encoders",
           "load_aligned_tower", "load_aligned_vision"]
