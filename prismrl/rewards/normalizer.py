"""Per-component min-max reward normalization over a sliding history window, with clipping.

For a component c with history H_c (all values of the last ``window`` updates, the current one included):

    n_c(x) = clip((x - min H_c) / (max H_c - min H_c), clip_low, clip_high)

and n_c(x) = 0.5 while max H_c - min H_c <= eps (one update, or a constant history). Each ``update`` adds a
batch of values (e.g. one per synthetic sample) as one window entry, so the window counts batches, not
values. The state (histories) round-trips through ``state_dict`` / ``load_state_dict`` for exact resume.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch
from torch import Tensor

from prismrl.choices import check_positive_int


class RewardNormalizer:
    """Min-max normalizer with one history per named component; see the module docstring."""

    def __init__(
        self,
        components: Sequence[str] = ("inter", "intra", "golden_loss"),
        window: int = 32,
        clip: tuple[float, float] = (0.0, 1.0),
        eps: float = 1e-8,
    ) -> None:
        check_positive_int("window", window)
        if len(clip) != 2 or not clip[0] < clip[1]:
            raise ValueError(f"clip: expected (low, high) with low < high, received {clip!r}")
        names = list(components)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"components: expected distinct names, received {names!r}")
        self.window, self.clip, self.eps = window, (float(clip[0]), float(clip[1])), eps
        self.history: dict[str, deque[list[float]]] = {name: deque(maxlen=window) for name in names}

    @property
    def components(self) -> list[str]:
        return list(self.history)

    def _check(self, component: str) -> None:
        if component not in self.history:
            raise KeyError(f"component: expected one of {self.components}, received {component!r}")

    def update(self, component: str, values: Tensor | Sequence[float] | float) -> None:
        """Append a batch of finite values as one window entry (NaN / inf are ignored; empty batches too)."""
        self._check(component)
        flat = torch.as_tensor(values, dtype=torch.float64).flatten()
        flat = flat[torch.isfinite(flat)]
        if flat.numel():
            self.history[component].append(flat.tolist())

    def bounds(self, component: str) -> tuple[float, float] | None:
        """(min, max) over the component's history, None when empty."""
        self._check(component)
        values = [v for entry in self.history[component] for v in entry]
        return (min(values), max(values)) if values else None

    def normalize(self, component: str, values: Tensor) -> Tensor:
        """n_c(values) elementwise (same shape and float dtype); 0.5 without a usable range."""
        values = torch.as_tensor(values)
        dtype = values.dtype if values.is_floating_point() else torch.float32
        bounds = self.bounds(component)
        if bounds is None or bounds[1] - bounds[0] <= self.eps:
            return torch.full(values.shape, 0.5, dtype=dtype, device=values.device)
        low, high = bounds
        scaled = (values.to(torch.float64) - low) / (high - low)
        return scaled.clamp(*self.clip).to(dtype)

    def update_and_normalize(self, component: str, values: Tensor) -> Tensor:
        """``update`` then ``normalize`` the same values."""
        self.update(component, values)
        return self.normalize(component, values)

    def state_dict(self) -> dict:
        return {"window": self.window, "clip": list(self.clip),
                "history": {name: [list(entry) for entry in h] for name, h in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore histories; the saved components must match this normalizer's."""
        if "history" not in state:
            raise ValueError(f"RewardNormalizer state: missing key 'history', received keys {sorted(state)}")
        if sorted(state["history"]) != sorted(self.history):
            raise ValueError(f"RewardNormalizer state: components {sorted(state['history'])} do not match "
                             f"{sorted(self.history)}")
        for name, entries in state["history"].items():
            self.history[name] = deque((list(map(float, e)) for e in entries), maxlen=self.window)
