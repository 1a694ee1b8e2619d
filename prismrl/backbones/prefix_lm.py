"""A causal LM (optionally with LoRA) that answers from a visual prefix given as input embeddings.

Sequence: inputs_embeds = [prefix ``[B, P, H]`` ; Embed(prompt ++ answer ++ EOS ++ padding)], positions =
``cumsum(attention_mask) - 1``. Loss: next-token cross-entropy on the answer tokens only
(``prismrl.backbones.answer_masking.prefix_lm_inputs``); the LM head runs only on those positions, so no [B, T, V]
logits tensor is built in training. ``generate`` is greedy with a KV cache: prompts are left-padded between the
prefix and the prompt (padding masked out), so all rows step together. An optional ``prefix_mask [B, P]`` (False =
a prefix position the row does not have, e.g. the audio tokens of a sample without a clip) masks those positions
out of attention and out of the position count, so the row is computed as if they were absent.
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
    text_ids,
)
from prismrl.backbones.answer_masking import (
    IGNORE_INDEX,
    left_padded_prompts,
    positions_from_mask,
    prefix_lm_inputs,
)
from prismrl.backbones.lora import LoraSettings, prepare_hf_backbone
from prismrl.backbones.shipped import check_exactly_one, split_tiny_config
from prismrl.choices import check_positive_int


def _load_lm(model_name_or_path: str | None, tiny_config: dict | None, torch_dtype: str | None,
             attn_implementation: str, quantization: str | None):
    """(causal LM, tokenizer) from exactly one of a name / path or a tiny llama config."""
    from prismrl.backbones.causal_lm import load_causal_lm
    from prismrl.backbones.tokenizers import load_smollm2_tokenizer, tiny_llama_config

    check_exactly_one(model_name_or_path, tiny_config)
    if tiny_config is None:
        return load_causal_lm(model_name_or_path, torch_dtype=torch_dtype, attn_implementation=attn_implementation,
                              quantization=quantization)
    _, overrides = split_tiny_config(tiny_config, ("llama",))
    tokenizer = load_smollm2_tokenizer()
    return load_causal_lm(config=tiny_llama_config(tokenizer, **overrides), tokenizer=tokenizer,
                          torch_dtype=torch_dtype, attn_implementation=attn_implementation, quantization=quantization)


def masked_prefix(attention_mask: Tensor, prefix: Tensor, prefix_mask: Tensor | None) -> Tensor:
    """``attention_mask [B, P + T]`` with its first P columns set to ``prefix_mask [B, P]`` (None = unchanged)."""
    if prefix_mask is None:
        return attention_mask
    if prefix_mask.shape != prefix.shape[:2]:
        raise ValueError(f"prefix_mask: expected shape {tuple(prefix.shape[:2])} (the prefix's [B, P]), received "
                         f"{tuple(prefix_mask.shape)}")
    attention_mask = attention_mask.clone()
    attention_mask[:, : prefix.shape[1]] = prefix_mask.to(attention_mask.device, attention_mask.dtype)
    return attention_mask


class PrefixLMDecoder(nn.Module):
    """Causal LM answer decoder fed with a visual prefix.

    Args:
        model_name_or_path / tiny_config: exactly one; "shipped:smollm2-135m-instruct" or an HF id / folder
            (``prismrl.backbones.causal_lm.load_causal_lm``), or ``{"model_type": "llama", ...overrides}`` (a random-init
            ``tiny_llama_config`` on the shipped SmolLM2 tokenizer).
        lora: LoRA settings (the base LM is frozen, adapters train); freeze: freeze the LM without LoRA.
        torch_dtype, attn_implementation: passed to the loader. quantization: "8bit" (bitsandbytes ``Linear8bitLt``,
            CPU or GPU) or "4bit" (NF4, CUDA GPU) base weights, prepared with peft's k-bit recipe (base frozen,
            non-int8 weights in float32); needs ``lora`` (QLoRA) or ``freeze=True``.
        prompt_template: the text before the answer, with ``{question}``; answer_template: the answer text,
            with ``{answer}`` (EOS is appended).
        max_length: text tokens per sample (prompt + answer; a longer answer is cut with a warning).
        max_new_tokens: generation budget.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        tiny_config: dict | None = None,
        lora: LoraSettings | None = None,
        freeze: bool = False,
        torch_dtype: str | None = None,
        attn_implementation: str = "sdpa",
        quantization: str | None = None,
        gradient_checkpointing: bool = False,
        prompt_template: str = "Question: {question}\nAnswer:",
        answer_template: str = " {answer}",
        max_length: int = 48,
        max_new_tokens: int = 6,
    ) -> None:
        super().__init__()
        for name, template, key in (("prompt_template", prompt_template, "{question}"),
                                    ("answer_template", answer_template, "{answer}")):
            if key not in template:
                raise ValueError(f"{name}: expected a template containing {key}, received {template!r}")
        check_positive_int("max_length", max_length)
        check_positive_int("max_new_tokens", max_new_tokens)
        if quantization is not None and lora is None and not freeze:
            raise ValueError(f"quantization: {quantization!r} base weights cannot be trained directly; expected lora "
                             "(QLoRA) or freeze: true, received lora=None, freeze=False")
        model, self.tokenizer = _load_lm(model_name_or_path, tiny_config, torch_dtype, attn_implementation, quantization)
        if quantization is not None:
            from peft import prepare_model_for_kbit_training

            # Gradient checkpointing is switched on below (non-reentrant), the project's way, not by peft.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if self.tokenizer.eos_token_id is None:
            raise ValueError("model_name_or_path: the tokenizer has no EOS token to end answers with")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.hidden_size: int = int(model.config.hidden_size)
        self.prompt_template, self.answer_template = prompt_template, answer_template
        self.max_length, self.max_new_tokens = max_length, max_new_tokens
        self.model = prepare_hf_backbone(model, lora=lora, freeze=freeze, gradient_checkpointing=gradient_checkpointing)

    def _causal_lm(self) -> nn.Module:
        """The transformers causal LM, also when wrapped by peft (its LoRA layers sit inside it)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def _embed(self, prefix: Tensor, input_ids: Tensor) -> Tensor:
        embed = self.model.get_input_embeddings()
        tokens = embed(input_ids.to(prefix.device))  # [B, T, H]
        return torch.cat([prefix.to(tokens.dtype), tokens], dim=1)  # [B, P + T, H]

    def _prompts(self, prefix: Tensor, questions: Sequence[str]) -> list[list[int]]:
        if prefix.dim() != 3 or prefix.shape[-1] != self.hidden_size:
            raise ValueError(f"prefix: expected shape [B, P, {self.hidden_size}], received {tuple(prefix.shape)}")
        questions = check_texts(questions, "questions", prefix.shape[0])
        return text_ids(self.tokenizer, [self.prompt_template.format(question=q) for q in questions])

    def forward(self, prefix: Tensor, questions: Sequence[str], answers: Sequence[str],
                prefix_mask: Tensor | None = None) -> AnswerDecoderOutput:
        """Loss on the answer tokens; logits ``[N, V]`` and labels ``[N]`` at the N answer positions."""
        prompts = self._prompts(prefix, questions)
        answers = answer_ids(self.tokenizer, check_texts(answers, "answers", prefix.shape[0]), self.answer_template)
        inputs = prefix_lm_inputs(prompts, answers, prefix.shape[1], self.max_length, self.pad_id)
        mask = masked_prefix(inputs.attention_mask.to(prefix.device), prefix, prefix_mask)  # [B, S]
        lm = self._causal_lm()
        hidden = lm.get_decoder()(inputs_embeds=self._embed(prefix, inputs.input_ids), attention_mask=mask,
                                  position_ids=positions_from_mask(mask)).last_hidden_state  # [B, S, H]
        targets = inputs.labels[:, 1:].to(prefix.device)  # [B, S - 1]: position t predicts token t + 1
        where = targets != IGNORE_INDEX
        logits = lm.get_output_embeddings()(hidden[:, :-1][where])  # [N, V]
        labels = targets[where]  # [N]
        return AnswerDecoderOutput(F.cross_entropy(logits.float(), labels), logits, labels)

    @torch.no_grad()
    def generate(self, prefix: Tensor, questions: Sequence[str], max_new_tokens: int | None = None,
                 prefix_mask: Tensor | None = None) -> list[str]:
        """Greedy answers (stop at EOS or after ``max_new_tokens``)."""
        prompts = self._prompts(prefix, questions)
        input_ids, mask = left_padded_prompts(prompts, prefix.shape[1], self.pad_id)
        mask = masked_prefix(mask.to(prefix.device), prefix, prefix_mask)  # [B, S]
        positions = positions_from_mask(mask)
        embeds = self._embed(prefix, input_ids)
        eos = self.tokenizer.eos_token_id
        past, generated = None, []
        done = torch.zeros(prefix.shape[0], dtype=torch.bool, device=prefix.device)
        for _ in range(max_new_tokens or self.max_new_tokens):
            cache = {} if past is None else {self._cache_argument(): past}
            out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=1, **cache)
            token = out.logits[:, -1].argmax(-1).masked_fill(done, eos)  # [B]
            generated.append(token)
            done |= token == eos
            if bool(done.all()):
                break
            past = out["cache"] if "cache" in out else out.past_key_values  # transformers >= 5.24 names it `cache`
            embeds = self.model.get_input_embeddings()(token[:, None])  # [B, 1, H]
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            positions = positions[:, -1:] + 1
        return decode_answers(self.tokenizer, torch.stack(generated, dim=1).tolist())

    def _cache_argument(self) -> str:
        import inspect

        return "cache" if "cache" in inspect.signature(self._causal_lm().forward).parameters else "past_key_values"

    def save_pretrained(self, folder: str) -> None:
        """Write the LM (or only its LoRA adapters) and the tokenizer to ``folder``."""
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


__all__ = ["PrefixLMDecoder", "masked_prefix"]
