"""``check_checkpoint_world_size``: resuming a fit under another number of processes is refused, naming both (the
2-process write / 1-process resume runs in test_masked_lm_fsdp2.py)."""

from __future__ import annotations

import pytest

from prismrl.lightning_modules.plumbing import CHECKPOINT_KEY, check_checkpoint_world_size


def test_another_world_size_is_an_error_naming_both():
    checkpoint = {CHECKPOINT_KEY: {"stage": "s", "version": "0", "world_size": 4}}
    with pytest.raises(ValueError, match=r"ckpt_path: .* run of 4 processes .* this run has 2"):
        check_checkpoint_world_size(checkpoint, 2)
    check_checkpoint_world_size(checkpoint, 4)
    check_checkpoint_world_size({CHECKPOINT_KEY: {"stage": "s"}}, 2)  # no record (older checkpoint): nothing to compare
    check_checkpoint_world_size({}, 2)
