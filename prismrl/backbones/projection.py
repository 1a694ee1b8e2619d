"""Projection head into the shared embedding space."""

from __future__ import annotations

from torch import Tensor, nn

from prismrl.choices import check_positive_int


class ProjectionHead(nn.Module):
    """`Linear(in, out)` or, with `hidden_dim`, `Linear(in, hidden) -> GELU -> Dropout -> Linear(hidden, out)`.

    Input `[..., in_dim]`, output `[..., out_dim]`.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim)):
            if value is not None:
                check_positive_int(name, value)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a float in [0, 1), received {dropout!r}")
        self.in_dim, self.out_dim, self.hidden_dim = in_dim, out_dim, hidden_dim
        if hidden_dim is None:
            self.net: nn.Module = nn.Linear(in_dim, out_dim)
        else:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim)
            )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"x: expected last dim in_dim={self.in_dim}, received shape {tuple(x.shape)}")
        return self.net(x)  # [..., out_dim]
