"""Pure-torch RL math shared by the stages: advantages, policy and value losses, KL estimators, log-probs.

Nothing here imports Lightning, so the functions are testable in isolation and reusable outside prismrl's modules.
Import from the submodules (``prismrl.rl.advantages``, ``prismrl.rl.policy_loss``, ``prismrl.rl.kl``,
``prismrl.rl.logprobs``, ``prismrl.rl.value_loss``, ``prismrl.rewards.functions``, ``prismrl.policy.rollout``) to keep ``import prismrl`` light.
"""
