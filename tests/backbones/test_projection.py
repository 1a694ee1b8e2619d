import pytest
import torch
import torch.nn.functional as F

from prismrl.backbones import ProjectionHead


def test_single_linear():
    head = ProjectionHead(6, 3)
    x = torch.randn(4, 6)
    torch.testing.assert_close(head(x), x @ head.net.weight.T + head.net.bias)
    assert sum(p.numel() for p in head.parameters()) == 6 * 3 + 3


def test_mlp_is_linear_gelu_dropout_linear():
    torch.manual_seed(0)
    head = ProjectionHead(6, 3, hidden_dim=5, dropout=0.5).eval()
    first, _, _, last = head.net
    x = torch.randn(2, 7, 6)
    want = F.linear(F.gelu(F.linear(x, first.weight, first.bias)), last.weight, last.bias)
    torch.testing.assert_close(head(x), want)
    head.train()
    assert not torch.allclose(head(x), want)  # dropout is active in training


@pytest.mark.parametrize(
    "kwargs,field", [({"in_dim": 0, "out_dim": 2}, "in_dim"), ({"in_dim": 2, "out_dim": 2, "dropout": 1.0}, "dropout")]
)
def test_bad_args(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ProjectionHead(**kwargs)


def test_wrong_input_width():
    with pytest.raises(ValueError, match="in_dim=4"):
        ProjectionHead(4, 2)(torch.randn(3, 5))
