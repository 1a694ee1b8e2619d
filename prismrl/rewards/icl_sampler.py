"""In-context example selection over a labelled golden training split, pure numpy/torch.

Strategies (``ICLStrategy``), each drawing ``k`` example indices per prompt:

- ``random``: k distinct indices uniformly at random.
- ``diverse``: greedy farthest-point sampling in an embedding space: a random first example, then
  repeatedly the example whose distance to its nearest already-chosen example is largest
  (x_next = argmax_i min_j d(x_i, x_j), d = cosine distance 1 - cos). Spreads the prompt over the data.
- ``balanced``: k / C examples of each of the C classes (k must be a multiple of C), uniformly within a class.

Sampling is a pure function of (seed, step): ``sample(step)`` seeds its own generator with
``SeedSequence([seed, step])``, so the examples of a prompt never depend on the global RNG or on where a
run was resumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import numpy as np
import torch
from torch import Tensor

from prismrl.choices import check_positive_int
from prismrl.choices import parse_choice


class ICLStrategy(str, Enum):
    """How in-context examples are chosen."""

    RANDOM = "random"
    DIVERSE = "diverse"
    BALANCED = "balanced"


def parse_strategy(value: str | ICLStrategy, field: str = "strategy") -> ICLStrategy:
    return parse_choice(ICLStrategy, value, field)


def farthest_point_indices(embeddings: Tensor, k: int, first: int) -> list[int]:
    """Greedy farthest-point selection of ``k`` rows of ``embeddings`` [N, D] starting at row ``first``.

    Cosine distance; ties go to the lowest index.
    """
    unit = torch.nn.functional.normalize(embeddings.float(), dim=-1)  # [N, D]
    chosen = [first]
    nearest = 1.0 - unit @ unit[first]  # [N] distance to the closest chosen row
    for _ in range(k - 1):
        nearest[chosen] = -1.0
        nxt = int(torch.argmax(nearest))
        chosen.append(nxt)
        nearest = torch.minimum(nearest, 1.0 - unit @ unit[nxt])
    return chosen


class ICLSampler:
    """Pick in-context example indices from a labelled pool; see the module docstring.

    Args:
        labels: class id per pool example, ids in [0, num_classes).
        k: examples per prompt.
        strategy: "random" | "diverse" | "balanced".
        embeddings: [N, D] features of the pool (required by "diverse").
        num_classes: defaults to max(labels) + 1.
        seed: base seed of every draw.
    Raises ValueError for a pool with fewer than two classes, a class without examples, or too few
    examples for ``k`` under the strategy (balanced: every class needs k / C).
    """

    def __init__(
        self,
        labels: Sequence[int],
        k: int = 4,
        strategy: str | ICLStrategy = ICLStrategy.BALANCED,
        embeddings: Tensor | None = None,
        num_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        self.strategy = parse_strategy(strategy)
        self.labels = np.asarray(list(labels), dtype=np.int64)
        check_positive_int("k", k)
        num_classes = int(self.labels.max()) + 1 if num_classes is None and len(self.labels) else (num_classes or 0)
        if num_classes < 2:
            raise ValueError(f"labels: the golden set needs at least 2 classes, received {num_classes} "
                             f"({len(self.labels)} examples)")
        counts = np.bincount(self.labels, minlength=num_classes)
        if (self.labels < 0).any() or len(counts) > num_classes:
            raise ValueError(f"labels: expected class ids in [0, {num_classes}), received {self.labels.min()}..{self.labels.max()}")
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            raise ValueError(f"labels: class {int(empty[0])} has no examples; every class needs at least one")
        if self.strategy is ICLStrategy.BALANCED:
            if k % num_classes:
                raise ValueError(f"k: strategy 'balanced' needs a multiple of the {num_classes} classes, received {k}")
            short = np.flatnonzero(counts < k // num_classes)
            if len(short):
                raise ValueError(f"labels: strategy 'balanced' with k={k} needs {k // num_classes} examples per class; "
                                 f"class {int(short[0])} has {int(counts[short[0]])}")
        elif k > len(self.labels):
            raise ValueError(f"k: expected at most the {len(self.labels)} pool examples, received {k}")
        if self.strategy is ICLStrategy.DIVERSE:
            if not isinstance(embeddings, Tensor) or embeddings.dim() != 2 or embeddings.shape[0] != len(self.labels):
                received = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
                raise ValueError(f"embeddings: strategy 'diverse' needs a [{len(self.labels)}, D] tensor, received {received}")
        self.embeddings = embeddings.detach().cpu() if isinstance(embeddings, Tensor) else None
        self.k, self.num_classes, self.seed = k, num_classes, seed

    def sample(self, step: int) -> list[int]:
        """The ``k`` pool indices for draw number ``step`` (distinct; same (seed, step) -> same indices)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(step)]))
        if self.strategy is ICLStrategy.RANDOM:
            return rng.choice(len(self.labels), size=self.k, replace=False).tolist()
        if self.strategy is ICLStrategy.DIVERSE:
            return farthest_point_indices(self.embeddings, self.k, int(rng.integers(len(self.labels))))
        per_class = self.k // self.num_classes
        picked = [rng.choice(np.flatnonzero(self.labels == c), size=per_class, replace=False) for c in range(self.num_classes)]
        order = np.concatenate(picked)
        return order[rng.permutation(len(order))].tolist()  # classes interleaved, not in blocks
