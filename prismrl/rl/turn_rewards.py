"""Per-turn advantages of multi-turn episodes: each assistant turn's tokens get the group-normalized return-to-go.

With r_{i,k} the reward of turn k of episode i (K_i turns; m_{i,k} = 1 for k < K_i):

    R_{i,k} = sum_{j >= k} m_{i,j} r_{i,j}                                   (return-to-go; R_{i,1} = episode reward)
    A_{i,k} = (R_{i,k} - mean_g R) / (std_g R + eps)                         mean / std over every valid (i, k) of
                                                                             the group (Bessel-corrected std)
    A_{i,t} = A_{i,turn(t)}  on every token t of turn k                      (environment tokens: 0)

With one turn per episode this is GRPO's group-normalized episode reward. ``scale=False`` keeps the centered
R - mean (Dr. GRPO). A group whose valid returns are all equal gets exactly zero (as ``group_normalized_advantages``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def returns_to_go(rewards: Tensor, mask: Tensor) -> Tensor:
    """R_k = sum_{j >= k} m_j r_j on valid turns, 0 elsewhere.  rewards, mask: [B, K] -> [B, K]."""
    if rewards.shape != mask.shape or rewards.dim() != 2:
        raise ValueError(f"rewards, mask: expected two [B, K] tensors of one shape, received "
                         f"{tuple(rewards.shape)} and {tuple(mask.shape)}")
    m = mask.to(rewards.dtype)
    masked = rewards * m  # [B, K]
    reversed_sum = masked.flip(1).cumsum(1).flip(1)  # [B, K]
    return reversed_sum * m


def turn_advantages(rewards: Tensor, mask: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """A_{i,k} of the module docstring.  rewards, mask: [B*G, K] (G rows per group, consecutive) -> [B*G, K]."""
    if group_size < 2 or rewards.shape[0] % group_size:
        raise ValueError(f"group_size: expected an int >= 2 dividing the {rewards.shape[0]} rows, received {group_size}")
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    ret = returns_to_go(rewards.to(dtype), mask)  # [N, K]
    n, k = ret.shape
    m = mask.to(dtype).reshape(-1, group_size * k)  # [P, G*K]
    grouped = ret.reshape(-1, group_size * k)  # [P, G*K]
    count = m.sum(1, keepdim=True)  # [P, 1]
    mean = (grouped * m).sum(1, keepdim=True) / count.clamp(min=1)  # [P, 1]
    centered = (grouped - mean) * m  # [P, G*K]
    if scale:
        std = ((centered ** 2).sum(1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()  # [P, 1]
        centered = centered / (std + eps)
    big, small = grouped.masked_fill(m == 0, float("-inf")), grouped.masked_fill(m == 0, float("inf"))
    constant = big.amax(1, keepdim=True) == small.amin(1, keepdim=True)  # [P, 1]
    return torch.where(constant, torch.zeros_like(centered), centered).reshape(n, k)


def token_advantages(turn_values: Tensor, token_turn: Tensor) -> Tensor:
    """Per token the value of its turn: out[b, t] = turn_values[b, token_turn[b, t]], 0 where token_turn < 0.
    turn_values: [B, K]; token_turn: [B, T] long -> [B, T]."""
    if turn_values.shape[0] != token_turn.shape[0] or token_turn.dim() != 2:
        raise ValueError(f"token_turn: expected [{turn_values.shape[0]}, T], received {tuple(token_turn.shape)}")
    index = token_turn.clamp(min=0).to(turn_values.device)  # [B, T]
    values = turn_values.gather(1, index)  # [B, T]
    return torch.where(token_turn.to(values.device) >= 0, values, torch.zeros_like(values))
