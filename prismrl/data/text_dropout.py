"""Caption word dropout: a text augmentation that removes whole words at random."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check_p(p: float) -> float:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"p: expected a word-drop probability in [0, 1), received {p!r}")
    return float(p)


def drop_words(caption: str, p: float, generator: torch.Generator | None = None) -> str:
    """Drop each whitespace-separated word independently with probability ``p``.

    A word is kept when ``u >= p`` with ``u ~ U[0, 1)``. If every word would be dropped, one word
    (chosen uniformly) is kept, so a non-empty caption stays non-empty. Kept words are joined by
    single spaces; with ``p == 0`` the caption is returned unchanged.
    """
    p = _check_p(p)
    words = caption.split()
    if p == 0.0 or not words:
        return caption
    keep = torch.rand(len(words), generator=generator) >= p  # [W]
    if not bool(keep.any()):
        keep[int(torch.randint(len(words), (1,), generator=generator))] = True
    return " ".join(word for word, kept in zip(words, keep.tolist()) if kept)


def apply_text_dropout(
    captions: Sequence[str], p: float, generator: torch.Generator | None = None
) -> list[str]:
    """``drop_words`` applied to every caption of a batch with one shared generator."""
    p = _check_p(p)
    return [drop_words(caption, p, generator) for caption in captions]
