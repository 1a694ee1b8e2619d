"""The tiny recursive decoder: the recursion against a naive loop, a tiny task learned, generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prismrl.backbones.answer_masking import IGNORE_INDEX
from prismrl.backbones.recursive_decoder import RecursiveDecoder, RecursiveReasoner


def _naive_states(reasoner: RecursiveReasoner, x: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
    """The recursion written out: t-1 latent recursions without gradient, one with, per supervision step."""
    empty = x[:, :0]
    y = reasoner.y_init.expand(len(x), -1, -1)
    z = reasoner.z_init.expand(len(x), -1, -1)
    states = []
    for _ in range(reasoner.n_supervision):
        for t in range(reasoner.t_recursions):
            with torch.set_grad_enabled(t == reasoner.t_recursions - 1):
                for _ in range(reasoner.n_latent):
                    z = reasoner.net(z + y, x, mask)
                y = reasoner.net(y + z, empty, None)
        states.append(y)
        y, z = y.detach(), z.detach()
    return states


def test_recursion_matches_a_naive_loop_in_values_and_gradients():
    torch.manual_seed(0)
    reasoner = RecursiveReasoner(dim=16, answer_length=3, depth=2, num_heads=2, n_latent=2, t_recursions=3, n_supervision=2)
    x = torch.randn(4, 5, 16, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 5, [True] + [False] * 4])
    states = reasoner(x, mask)
    expected = _naive_states(reasoner, x, mask)
    assert len(states) == 2 and states[0].shape == (4, 3, 16)
    for got, want in zip(states, expected):
        torch.testing.assert_close(got, want)
    grads = torch.autograd.grad(sum(s.square().sum() for s in states), x)[0]
    want = torch.autograd.grad(sum(s.square().sum() for s in expected), x)[0]
    torch.testing.assert_close(grads, want)
    x2 = x.detach().clone()
    x2[1, 3:] = 100.0  # padded context tokens do not change the answer state
    torch.testing.assert_close(reasoner(x2, mask)[1][1], states[1][1].detach())


def test_every_supervision_step_refines_the_same_state():
    reasoner = RecursiveReasoner(dim=8, answer_length=2, depth=1, num_heads=2, n_supervision=3)
    states = reasoner(torch.randn(2, 4, 8))
    assert all(s.grad_fn is not None for s in states)  # each step is trained through its last recursion
    assert not torch.allclose(states[0], states[1])  # step 2 continues from step 1's (detached) y, z


def test_learns_a_tiny_task_to_high_accuracy():
    """Answer slot 0 = the third input token, slot 1 = the largest input token (vocab 10, 4 inputs)."""
    torch.manual_seed(0)
    vocab, dim = 10, 32
    embed, position = nn.Embedding(vocab, dim), nn.Parameter(torch.randn(4, dim) * 0.1)
    reasoner = RecursiveReasoner(dim, answer_length=2, depth=1, num_heads=2, n_latent=2, t_recursions=2, n_supervision=2)
    head = nn.Linear(dim, vocab)
    params = [*embed.parameters(), position, *reasoner.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)

    def task(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randint(0, vocab, (n, 4))
        return x, torch.stack([x[:, 2], x.max(dim=1).values], dim=1)  # [n, 2]

    for _ in range(250):
        x, y = task(128)
        steps = reasoner(embed(x) + position)
        loss = torch.stack([F.cross_entropy(head(s).flatten(0, 1), y.flatten()) for s in steps]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, y = task(1000)
    with torch.no_grad():
        accuracy = (head(reasoner(embed(x) + position)[-1]).argmax(-1) == y).all(dim=1).float().mean().item()
    assert accuracy > 0.95, accuracy


def test_decoder_generate_reads_the_last_step_and_stops_at_eos():
    from prismrl.backbones.answer_decoder import decode_answers

    torch.manual_seed(0)
    decoder = RecursiveDecoder(dim=16, answer_length=3, num_heads=2, depth=1, max_prefix_length=4).eval()
    prefix, questions = torch.randn(2, 4, 16), ["What digit is shown?", "Is it odd?"]
    with torch.no_grad():
        ids = decoder.step_logits(prefix, questions)[-1].argmax(-1)  # [2, 3]
    assert decoder.generate(prefix, questions) == decode_answers(decoder.tokenizer, ids.tolist())
    with torch.no_grad():
        decoder.head[1].weight.zero_()
        decoder.head[1].bias.zero_()
        decoder.head[1].bias[27867] = 50.0  # "seven" in every slot, no EOS: all three slots are kept
    assert decoder.generate(prefix, questions) == ["sevensevenseven"] * 2
    assert decode_answers(decoder.tokenizer, [[27867, 2, 16114], [2, 27867, 2]]) == ["seven", ""]  # cut at EOS
    with pytest.raises(ValueError, match=r"prefix: expected shape \[B, P <= 4, 16\]"):
        decoder.generate(torch.randn(2, 5, 16), questions)
    with pytest.raises(ValueError, match="questions: expected 2 strings"):
        decoder.generate(prefix, ["one question"])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="n_latent: expected an int >= 1"):
        RecursiveReasoner(dim=8, answer_length=2, num_heads=2, n_latent=0)
    with pytest.raises(ValueError, match="num_heads: must divide dim=8"):
        RecursiveReasoner(dim=8, answer_length=2, num_heads=3)
    with pytest.raises(ValueError, match=r"x: expected shape \[B, Lc, 8\]"):
        RecursiveReasoner(dim=8, answer_length=2, num_heads=2)(torch.randn(2, 3, 4))


def test_answer_vocabulary_restricts_the_head_and_maps_back_to_tokens():
    torch.manual_seed(0)
    answers = ["seven", "odd", "yes"]  # SmolLM2 ids 27867, 16114, 10407; EOS = 2
    decoder = RecursiveDecoder(dim=16, answer_length=3, num_heads=2, depth=1, answer_vocabulary=answers).eval()
    assert decoder.output_ids.tolist() == [2, 10407, 16114, 27867] and decoder.head[1].out_features == 4
    assert decoder.labels(["seven", "yes"], 2).tolist() == [[3, 0, -100], [1, 0, -100]]  # head indices
    out = decoder(torch.randn(2, 4, 16), ["q", "q"], ["odd", "seven"])
    assert out.logits.shape == (2, 3, 4) and out.labels.tolist() == [[2, 0, IGNORE_INDEX], [3, 0, IGNORE_INDEX]]
    with torch.no_grad():
        decoder.head[1].weight.zero_()
        decoder.head[1].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 9.0]))
    assert decoder.generate(torch.randn(2, 4, 16), ["q", "q"]) == ["sevensevenseven"] * 2
    with pytest.raises(ValueError, match="answers: answer 'eight' \\(sample 1\\) has a token outside answer_vocabulary"):
        decoder.labels(["odd", "eight"], 2)
