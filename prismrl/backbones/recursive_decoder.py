"""A tiny recursive answer decoder in the spirit of Tiny Recursive Models (TRM).

One small network ``net`` (``depth`` post-norm blocks: attention of the state over [context ; state], then a
feed-forward) is applied again and again to refine a latent reasoning state z and an answer state y, both
``[B, La, D]`` over La answer slots, given the context x ``[B, Lc, D]`` (visual latents ++ question token embeddings):

    latent_recursion(x, y, z):  z <- net(z + y, x)   n_latent times      (reason, looking at the input)
                                y <- net(y + z, -)   once                 (update the answer, no input)
    deep_recursion(x, y, z):    t_recursions - 1 latent recursions without gradient, then one with gradient
    forward:                    y, z = y0, z0;  for s in 1..n_supervision:
                                    y, z = deep_recursion(x, y, z);  logits_s = head(y);  y, z = detach(y, z)

Every supervision step is trained (deep supervision: the loss is the mean over steps of the answer-slot
cross-entropy, summed into one optimizer step here); the answer is read from the last step's logits.
Decoding is non-autoregressive: the La slots are predicted at once as ``answer ++ EOS`` (unused slots -100),
as TRM predicts its whole output grid from y. Answers here are a few tokens long, so one pass is enough and
generation costs one forward, with no KV cache. TRM's learned halting (ACT) is not used: the number of
supervision steps is fixed. With ``answer_vocabulary`` the output head covers only the tokens of the given answers
(+ EOS), as TRM's head covers its task's symbols: a closed-answer task then costs no [La, V] softmax over a
49k-token vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prismrl.backbones.answer_decoder import (
    AnswerDecoderOutput,
    answer_ids,
    check_texts,
    decode_answers,
    load_text_tokenizer,
    text_ids,
)
from prismrl.backbones.answer_masking import IGNORE_INDEX, positions_from_mask, slot_labels
from prismrl.backbones.resampler import PerceiverAttention
from prismrl.choices import check_positive_int


def _positive(**values: int) -> None:
    for name, value in values.items():
        check_positive_int(name, value)


class RecursiveReasoner(nn.Module):
    """The recursion above: context ``[B, Lc, dim]`` (+ mask ``[B, Lc]``, True = real) -> one answer state
    ``[B, answer_length, dim]`` per supervision step (gradients flow only through each step's last recursion)."""

    def __init__(self, dim: int, answer_length: int, depth: int = 2, num_heads: int = 4, ff_mult: int = 4,
                 n_latent: int = 3, t_recursions: int = 2, n_supervision: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        _positive(dim=dim, answer_length=answer_length, depth=depth, num_heads=num_heads, ff_mult=ff_mult,
                  n_latent=n_latent, t_recursions=t_recursions, n_supervision=n_supervision)
        if dim % num_heads:
            raise ValueError(f"num_heads: must divide dim={dim}, received {num_heads}")
        self.dim, self.answer_length = dim, answer_length
        self.n_latent, self.t_recursions, self.n_supervision = n_latent, t_recursions, n_supervision
        self.attention = nn.ModuleList(PerceiverAttention(dim, num_heads, dim // num_heads, dropout) for _ in range(depth))
        self.feed_forward = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim)) for _ in range(depth)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2 * depth))
        self.y_init = nn.Parameter(torch.randn(answer_length, dim) * 0.02)  # [La, D]
        self.z_init = nn.Parameter(torch.randn(answer_length, dim) * 0.02)  # [La, D]

    def net(self, state: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        """The one small network: ``depth`` x (state = LN(state + Attn(state -> [context ; state]));
        state = LN(state + FF(state))). Post-norm (as in TRM) keeps the state bounded however often it is applied."""
        for i, (attention, feed_forward) in enumerate(zip(self.attention, self.feed_forward)):
            state = self.norms[2 * i](state + attention(context, state, mask))
            state = self.norms[2 * i + 1](state + feed_forward(state))
        return state  # [B, La, D]

    def latent_recursion(self, x: Tensor, mask: Tensor | None, y: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """z <- net(z + y, x) n_latent times, then y <- net(y + z) without the input."""
        no_input = x[:, :0]  # [B, 0, D]
        for _ in range(self.n_latent):
            z = self.net(z + y, x, mask)
        return self.net(y + z, no_input, None), z

    def forward(self, x: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x: expected shape [B, Lc, {self.dim}], received {tuple(x.shape)}")
        batch = x.shape[0]
        y = self.y_init.expand(batch, -1, -1)  # [B, La, D]
        z = self.z_init.expand(batch, -1, -1)  # [B, La, D]
        states = []
        for _ in range(self.n_supervision):
            with torch.no_grad():
                for _ in range(self.t_recursions - 1):
                    y, z = self.latent_recursion(x, mask, y, z)
            y, z = self.latent_recursion(x, mask, y, z)
            states.append(y)
            y, z = y.detach(), z.detach()
        return states


class RecursiveDecoder(nn.Module):
    """Answer decoder: [visual prefix ; question token embeddings] -> RecursiveReasoner -> answer slot logits.

    Context x = [prefix ``[B, P, dim]`` ; Embed(question ids) ``[B, Q, dim]``] + learned positions, with
    padded question tokens masked. Loss = mean over supervision steps of CE(head(y_s), slot labels).

    Args:
        dim: width of the prefix, the token embeddings and the recursion (``hidden_size``).
        answer_length: answer slots La (answer tokens + EOS; longer answers are cut with a warning).
        max_question_length: question tokens kept (the question is truncated to its first tokens).
        max_prefix_length: longest visual prefix (size of the position table together with the question).
        tokenizer_name_or_path: HF id / folder; None = the shipped SmolLM2 tokenizer. The vocabulary size
            sets the embedding and output head.
        depth, num_heads, ff_mult, n_latent, t_recursions, n_supervision, dropout: ``RecursiveReasoner``.
        answer_vocabulary: answers whose tokens (+ EOS) are the only outputs (None = the whole vocabulary); an
            answer with another token is refused with a ValueError.
    """

    def __init__(self, dim: int = 128, answer_length: int = 4, max_question_length: int = 24, max_prefix_length: int = 64,
                 tokenizer_name_or_path: str | None = None, depth: int = 2, num_heads: int = 4, ff_mult: int = 4,
                 n_latent: int = 3, t_recursions: int = 2, n_supervision: int = 2, dropout: float = 0.0,
                 answer_vocabulary: list[str] | None = None) -> None:
        super().__init__()
        _positive(max_question_length=max_question_length, max_prefix_length=max_prefix_length)
        self.tokenizer = load_text_tokenizer(tokenizer_name_or_path)
        self.hidden_size, self.answer_length = dim, answer_length
        self.max_question_length, self.max_prefix_length = max_question_length, max_prefix_length
        vocab = len(self.tokenizer)
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(max_prefix_length + max_question_length, dim) * 0.02)
        self.reasoner = RecursiveReasoner(dim, answer_length, depth, num_heads, ff_mult, n_latent, t_recursions,
                                          n_supervision, dropout)
        outputs = torch.arange(vocab)  # head index -> token id
        if answer_vocabulary is not None:
            tokens = {t for ids in answer_ids(self.tokenizer, check_texts(answer_vocabulary, "answer_vocabulary")) for t in ids}
            outputs = torch.tensor(sorted(tokens))
        lookup = torch.full((vocab,), -1, dtype=torch.long)  # token id -> head index (-1 = not an output)
        lookup[outputs] = torch.arange(len(outputs))
        self.register_buffer("output_ids", outputs, persistent=False)
        self.register_buffer("output_index", lookup, persistent=False)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, len(outputs)))

    def context(self, prefix: Tensor, questions: Sequence[str], prefix_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(x ``[B, P + Q, dim]``, mask ``[B, P + Q]`` bool) from the prefix and the tokenized questions; positions
        count only kept tokens (``cumsum(mask) - 1``), so prefix positions masked out by ``prefix_mask [B, P]``
        (False = absent) leave the row as if they were not there."""
        if prefix.dim() != 3 or prefix.shape[-1] != self.hidden_size or prefix.shape[1] > self.max_prefix_length:
            raise ValueError(f"prefix: expected shape [B, P <= {self.max_prefix_length}, {self.hidden_size}], "
                             f"received {tuple(prefix.shape)}")
        questions = check_texts(questions, "questions", prefix.shape[0])
        ids = [q[: self.max_question_length] or [self.tokenizer.eos_token_id] for q in text_ids(self.tokenizer, questions)]
        width = max(len(q) for q in ids)
        tokens = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)  # [B, Q]
        real = torch.zeros(len(ids), width, dtype=torch.bool)  # [B, Q]
        for i, q in enumerate(ids):
            tokens[i, : len(q)], real[i, : len(q)] = torch.tensor(q), True
        tokens, real = tokens.to(prefix.device), real.to(prefix.device)
        if prefix_mask is not None and prefix_mask.shape != prefix.shape[:2]:
            raise ValueError(f"prefix_mask: expected shape {tuple(prefix.shape[:2])}, received {tuple(prefix_mask.shape)}")
        kept = real.new_ones(prefix.shape[:2]) if prefix_mask is None else prefix_mask.to(real.device, torch.bool)
        mask = torch.cat([kept, real], dim=1)  # [B, P + Q]
        x = torch.cat([prefix, self.embed_tokens(tokens)], dim=1)  # [B, P + Q, D]
        x = x + self.position[positions_from_mask(mask)]  # = position[:P + Q] when nothing is masked before the end
        return x, mask

    def step_logits(self, prefix: Tensor, questions: Sequence[str], prefix_mask: Tensor | None = None) -> list[Tensor]:
        """Answer-slot logits ``[B, La, K]`` of every supervision step (K = head outputs, see ``output_ids``)."""
        x, mask = self.context(prefix, questions, prefix_mask)
        return [self.head(y) for y in self.reasoner(x, mask)]

    def labels(self, answers: Sequence[str], batch_size: int) -> Tensor:
        """Slot labels ``[B, La]`` as head indices: answer ids ++ EOS, then -100."""
        answers = check_texts(answers, "answers", batch_size)
        tokens = slot_labels(answer_ids(self.tokenizer, answers), self.answer_length)  # [B, La] token ids
        index = self.output_index.cpu()[tokens.clamp_min(0)].masked_fill(tokens == IGNORE_INDEX, IGNORE_INDEX)
        unknown = (index == -1).nonzero()
        if len(unknown):
            row = int(unknown[0, 0])
            raise ValueError(f"answers: answer {answers[row]!r} (sample {row}) has a token outside answer_vocabulary")
        return index

    def forward(self, prefix: Tensor, questions: Sequence[str], answers: Sequence[str],
                prefix_mask: Tensor | None = None) -> AnswerDecoderOutput:
        labels = self.labels(answers, prefix.shape[0]).to(prefix.device)  # [B, La]
        steps = self.step_logits(prefix, questions, prefix_mask)
        losses = [F.cross_entropy(s.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX) for s in steps]
        return AnswerDecoderOutput(loss=torch.stack(losses).mean(), logits=steps[-1], labels=labels)

    @torch.no_grad()
    def generate(self, prefix: Tensor, questions: Sequence[str], max_new_tokens: int | None = None,
                 prefix_mask: Tensor | None = None) -> list[str]:
        """Greedy answers: argmax per slot of the last supervision step, cut at the first EOS."""
        ids = self.output_ids[self.step_logits(prefix, questions, prefix_mask)[-1].argmax(-1)]  # [B, La] token ids
        return decode_answers(self.tokenizer, ids[:, : max_new_tokens or self.answer_length].tolist())


__all__ = ["RecursiveDecoder", "RecursiveReasoner"]
