"""With one optimizer step per rollout GRPO takes pi_old = the current log-probs (detached) instead of a second
no-grad forward: the loss and the gradients equal those of the recomputed pi_old, on a tiny real LoRA policy."""

import torch

from prismrl.lightning_modules.grpo import GRPOModule
from prismrl.policy.build import PolicySettings
from prismrl.rewards.functions import FormatReward
from prismrl.rl.kl import KLEstimator
from prismrl.rl.policy_loss import LossAggregation, grpo_loss


def test_detached_old_logprobs_equal_the_recomputed_ones():
    torch.manual_seed(0)
    module = GRPOModule(reward=FormatReward(pattern="x"), group_size=2, beta=0.04,
                        policy=PolicySettings(tiny_config={"model_type": "llama"},
                                              lora={"r": 2, "alpha": 4}))
    with torch.no_grad():  # LoRA B starts at 0: move it so that the policy differs from its reference
        for name, p in module.policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    prompts = module.adapter.build_prompts(["What is 2+2?", "Say hi to the reader"]).select(
        torch.tensor([0, 0, 1, 1]))
    batch = module.adapter.append_completions(prompts, [[28, 29, 30], [31], [40, 41, 2], [44, 45]])
    module.policy.eval()
    module._fixed_logprobs(batch, needs_old=True)  # the recompute path: pi_old and pi_ref without grad
    module._fixed_logprobs(batch, needs_old=True)  # again, now through the shared prefix (head checked)
    mask = batch.loss_mask[:, 1:]
    assert not torch.allclose(batch.old_logprobs * mask, batch.ref_logprobs * mask)  # the KL term is not 0
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    module.policy.train()
    results = []
    for old in (None, batch.old_logprobs):
        logprobs, _ = module._logprobs(module.policy, batch)
        loss, _ = grpo_loss(logprobs, advantages, mask, old, batch.ref_logprobs, beta=0.04,
                            kl_estimator=KLEstimator.K3, eps_low=0.2, eps_high=0.28,
                            aggregation=LossAggregation.DAPO, max_completion_length=8)
        params = [p for p in module.policy.parameters() if p.requires_grad]
        results.append((loss.detach(), torch.autograd.grad(loss, params)))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, atol=1e-6, rtol=1e-5)
    assert len(grads_a) > 0 and any(g.abs().sum() > 0 for g in grads_a)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
