import math

import pytest
import torch

from prismrl.optim import decay_groups, warmup_cosine_factor, warmup_cosine_scheduler


def test_warmup_cosine_factor_hand_computed():
    # total 10 steps, 2 warmup: 0.5, 1.0, then cosine over 8 steps
    assert warmup_cosine_factor(0, 10, 2) == pytest.approx(0.5)
    assert warmup_cosine_factor(1, 10, 2) == pytest.approx(1.0)
    assert warmup_cosine_factor(2, 10, 2) == pytest.approx(1.0)
    assert warmup_cosine_factor(6, 10, 2) == pytest.approx(0.5)  # halfway through decay
    assert warmup_cosine_factor(10, 10, 2) == pytest.approx(0.0)
    assert warmup_cosine_factor(10, 10, 2, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine_factor(4, 10, 2, 0.2) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.25)))


def test_scheduler_drives_lr_and_validates():
    param = torch.nn.Parameter(torch.zeros(2, 2))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = warmup_cosine_scheduler(optimizer, total_steps=10, warmup_ratio=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0) and lrs[-1] < 0.05
    with pytest.raises(ValueError, match="warmup_ratio"):
        warmup_cosine_scheduler(optimizer, 10, 1.5)
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine_scheduler(optimizer, 0, 0.1)


def test_decay_groups_split_matrices_from_scalars_and_skip_frozen():
    layer = torch.nn.Linear(3, 4)
    scale = torch.nn.Parameter(torch.tensor(1.0))
    frozen = torch.nn.Parameter(torch.ones(2, 2), requires_grad=False)
    groups = decay_groups([("w.weight", layer.weight), ("w.bias", layer.bias), ("logit_scale", scale), ("f", frozen)], 0.1, 1e-3)
    assert [len(g["params"]) for g in groups] == [1, 2]
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0


def test_adamw_uses_the_fused_kernel_on_plain_tensors_and_matches_the_loop():
    from prismrl.optim import OptimizerSettings, adamw_kernel, adamw_with_schedule

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    groups = [{"params": list(model.parameters())}]
    assert adamw_kernel(OptimizerSettings(), groups) == {"fused": True}
    assert adamw_kernel(OptimizerSettings(fused=False), groups) == {"foreach": True}
    config = adamw_with_schedule(OptimizerSettings(lr=1e-2), [(model.named_parameters(), 1e-2)], total_steps=4)
    assert config["optimizer"].defaults["fused"] is True
    reference = torch.nn.Linear(8, 4)
    reference.load_state_dict(model.state_dict())
    loop = torch.optim.AdamW([reference.weight, reference.bias], lr=1e-2, betas=(0.9, 0.999), weight_decay=0.01,
                             foreach=False)
    for _ in range(3):
        x = torch.randn(5, 8)
        for net, optimizer in ((model, config["optimizer"]), (reference, loop)):
            optimizer.zero_grad()
            net(x).pow(2).sum().backward()
            optimizer.step()
    torch.testing.assert_close(model.weight, reference.weight, atol=1e-5, rtol=1e-5)  # same update, other rounding
