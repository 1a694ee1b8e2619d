import pytest
from torch import nn

from prismrl.backbones import count_parameters, freeze, set_requires_grad, unfreeze


def make_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))  # 16 + 10 parameters


def test_counts_freeze_unfreeze():
    net = make_net()
    assert count_parameters(net) == 26
    assert count_parameters(net, trainable_only=True) == 26
    assert freeze(net) is net
    assert count_parameters(net, trainable_only=True) == 0
    assert count_parameters(net) == 26
    unfreeze(net[2])
    assert count_parameters(net, trainable_only=True) == 10
    unfreeze(net)
    assert count_parameters(net, trainable_only=True) == 26
    set_requires_grad(net[0], False)
    assert count_parameters(net, trainable_only=True) == 10


def test_shared_parameters_counted_once():
    layer = nn.Linear(2, 2)
    assert count_parameters(nn.Sequential(layer, layer)) == 6


def test_type_errors():
    with pytest.raises(TypeError, match="module"):
        freeze("not a module")
    with pytest.raises(TypeError, match="flag"):
        set_requires_grad(make_net(), 1)
    with pytest.raises(TypeError, match="module"):
        count_parameters(None)
