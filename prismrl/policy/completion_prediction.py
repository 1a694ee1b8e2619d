"""``predict_step`` of the rollout stages: completions for prompts (``prismrl predict`` on GRPO / generator PPO).

- A batch of ``PromptRecord``s (GRPO): one greedy completion per prompt (images included), scored by the stage's
  reward: columns prompt, completion, answer (the reference, "" when none), reward.
- A batch of generation requests ``{"request_id": [B], "label": [B]}`` (generator PPO): one sampled example per
  request, parsed as in training: columns label_id, label, request_id, prompt (the rendered request with its
  in-context examples), completion (the raw text), text (the parsed example), status (ok or why not).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prismrl.data.records import PromptRecord


def prompt_completions(module: Any, records: list[PromptRecord]) -> dict[str, Any]:
    """Greedy completion and reward per prompt record (``module.rollout(records, greedy=True)``)."""
    _, texts, scores = module.rollout(records, greedy=True)
    return {"prompt": [r.prompt for r in records], "completion": list(texts),
            "answer": [r.answer or "" for r in records], "reward": scores.total.detach().float().cpu()}


def request_completions(module: Any, requests: dict[str, Tensor]) -> dict[str, Any]:
    """One sampled, parsed example per generation request (``module.generate_examples``)."""
    labels, ids = requests["label"].tolist(), requests["request_id"].tolist()
    _, completions, report = module.generate_examples(labels, ids)
    return {"label_id": requests["label"].cpu(), "label": [module.label_names[y] for y in labels],
            "request_id": requests["request_id"].cpu(),
            "prompt": [module.render_request(y, r) for y, r in zip(labels, ids)],
            "completion": module.tokenizer.batch_decode(completions, skip_special_tokens=True),
            "text": [item.text for item in report.items], "status": [item.status.value for item in report.items]}


class CompletionPrediction:
    """Mixin: ``predict_step`` = completions for a batch of prompt records or generation requests (module docstring)."""

    @torch.no_grad()
    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        if isinstance(batch, dict) and {"label", "request_id"} <= set(batch) and hasattr(self, "generate_examples"):
            return request_completions(self, batch)
        if isinstance(batch, (list, tuple)) and batch and all(isinstance(r, PromptRecord) for r in batch) \
                and hasattr(self, "rollout"):
            return prompt_completions(self, list(batch))
        raise TypeError(f"batch: {type(self).__name__}.predict_step expected "
                        f"{'generation requests {label, request_id}' if hasattr(self, 'generate_examples') else 'a list of PromptRecord'}, "
                        f"received {type(batch).__name__}")
