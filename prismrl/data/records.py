"""Prompt records for RL tasks: one prompt, its images and its reference answer.

``IMAGE_PLACEHOLDER`` marks where each image goes in a prompt; the policy adapters
(``prismrl.policy.adapters``) replace it with their family's vision tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

IMAGE_PLACEHOLDER = "<image>"


@dataclass
class PromptRecord:
    """One prompt of a task: ``prompt`` holds one "<image>" per entry of ``images``; ``answer`` is the reference."""

    prompt: str
    images: list[Image.Image] = field(default_factory=list)
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise TypeError(f"PromptRecord.prompt: expected str, received {type(self.prompt).__name__}")
        if not isinstance(self.images, list) or not all(isinstance(i, Image.Image) for i in self.images):
            raise TypeError(f"PromptRecord.images: expected a list of PIL images, received {self.images!r:.80}")
        if self.answer is not None and not isinstance(self.answer, str):
            raise TypeError(f"PromptRecord.answer: expected str or None, received {type(self.answer).__name__}")
        found = self.prompt.count(IMAGE_PLACEHOLDER)
        if found != len(self.images):
            raise ValueError(
                f"PromptRecord.prompt: found {found} {IMAGE_PLACEHOLDER!r} placeholder(s) for {len(self.images)} "
                f"image(s); put exactly one {IMAGE_PLACEHOLDER!r} where each image goes"
            )
