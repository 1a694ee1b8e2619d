"""Reading checkpoint files safely: tensors, plain Python values and allow-listed settings classes only.

``torch.load(..., weights_only=True)`` refuses any other pickled object, so a crafted file cannot run code on load;
settings dataclasses that modules keep in their hyperparameters are allow-listed with ``prismrl.choices.checkpoint_safe``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


def load_checkpoint(path: str | Path, field: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint dict at ``path`` on the CPU; FileNotFoundError / ValueError naming ``field`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{field}: expected a checkpoint file, received '{path}' (no such file)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{field}: '{path}' holds pickled objects other than tensors and plain values, which prismrl "
                         f"does not load (weights_only=True): {reason}") from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{field}: '{path}' is not a readable checkpoint (truncated or not written by torch.save): "
                         f"{err}") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{field}: expected a checkpoint dict in '{path}', received a {type(checkpoint).__name__}")
    return checkpoint
