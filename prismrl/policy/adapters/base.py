"""VLMAdapter: prompts + images -> a left-padded prompt batch for ``generate``, and prompt + completion
tokens -> a right-padded training batch whose ``loss_mask`` is 1 exactly on the completion tokens.

Prompts mark where each image goes with ``IMAGE_PLACEHOLDER`` ("<image>"), one per image. The adapter
renders the prompt with the tokenizer's chat template (user turn + generation prompt), replaces every
placeholder by the family's image tokens (as many as the vision tower yields for that image) and
tokenizes. A family subclass only says how images become pixel tensors and how many tokens each image
takes (``process_images``), and how one image is written in text (``image_text``).

How images and prompts are processed is set by ``ProcessorSettings`` (YAML: ``model.init_args.processor``):
image-processor settings and the chat template. A model folder that carries its own processor files
(``preprocessor_config.json``, or ``processor_config.json`` with an ``image_processor`` entry) gives the image
processor (``AutoImageProcessor.from_pretrained``) and, when the tokenizer has none, the chat template
(``chat_template.jinja`` / ``chat_template.json``); fields set in ``ProcessorSettings`` win over the folder's.
A tokenizer without a chat template is an error unless ``use_chat_template: false`` asks for raw prompts.

Empty completions are allowed: that row's ``loss_mask`` is all zero, so it adds nothing to a
token-summed loss; the reward function alone decides what reward an empty answer earns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor

from prismrl.data.records import IMAGE_PLACEHOLDER
from prismrl.policy.adapters.processor_settings import (
    IMAGE_FIELDS,
    ProcessorSettings,
    folder_chat_template,
    has_processor_files,
)
from prismrl.policy.images import normalize_images
from prismrl.policy.multimodal import MultimodalBatch

RopeIndexFn = Callable[[MultimodalBatch], Tensor]  # batch -> [3, B, T] M-RoPE positions


@dataclass
class ProcessedImages:
    """A family's image-processor output for N images (in sample order)."""

    pixel_values: Tensor | None
    pixel_rows_per_image: list[int]  # rows of pixel_values per image
    tokens_per_image: list[int]  # image tokens per image in the text
    per_image_kwargs: dict[str, Tensor] = field(default_factory=dict)  # one row per image


class VLMAdapter(ABC):
    """Family-specific batch building for a (vision-)language policy; see the module docstring."""

    model_types: ClassVar[tuple[str, ...]] = ()
    supports_images: ClassVar[bool] = True
    token_kwarg_keys: ClassVar[tuple[str, ...]] = ()  # per-token model kwargs rebuilt from input_ids
    special_tokens: ClassVar[dict[str, str]] = {}  # tiny configs: config field -> vision token added to the tokenizer
    image_settings: ClassVar[tuple[str, ...]] = ()  # the ProcessorSettings image fields this family uses

    @classmethod
    def tiny_config(cls, tokenizer, **overrides: Any):
        """A tiny random-init transformers config of this family whose vocab and special ids match ``tokenizer``.

        Adds ``special_tokens`` to ``tokenizer`` (in place). ``text_config=`` / ``vision_config=`` dicts are
        merged into the family's defaults; other overrides go to the top-level config. A family adapter without a
        recipe (a checkpoint-only family) loads from ``model_name_or_path`` only.
        """
        raise ValueError(f"tiny_config: {cls.__name__} has no tiny config recipe; load this family from "
                         "model_name_or_path instead")

    def __init__(self, tokenizer, config, system_prompt: str | None = None, use_chat_template: bool = True,
                 processor: ProcessorSettings | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = config
        if system_prompt is not None and IMAGE_PLACEHOLDER in system_prompt:
            raise ValueError(f"system_prompt: must not contain the image placeholder {IMAGE_PLACEHOLDER!r}")
        self.system_prompt = system_prompt
        if processor is not None and not isinstance(processor, ProcessorSettings):
            raise TypeError(f"processor: expected ProcessorSettings, received {type(processor).__name__}")
        self.processor_settings = processor or ProcessorSettings()
        unused = [f for f in IMAGE_FIELDS if getattr(self.processor_settings, f) is not None and f not in self.image_settings]
        if unused:
            raise ValueError(f"processor.{unused[0]}: {type(self).__name__} has no such image setting (it uses "
                             f"{list(self.image_settings) or 'none'}), received {getattr(self.processor_settings, unused[0])!r}")
        self.use_chat_template = use_chat_template and self.processor_settings.use_chat_template
        if self.use_chat_template:
            self._install_chat_template()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("tokenizer: needs a pad_token_id or an eos_token_id to pad batches, it has neither")
        self.pad_token_id = int(pad)

    # ---- processor files and chat template -------------------------------------------------------
    def processor_source(self) -> str | None:
        """Where the image processor loads from: ``processor.name_or_path``; else, with ``processor.from_model_folder``,
        the model's folder when it carries processor files, or the model's HF id; else None (the family's default)."""
        settings = self.processor_settings
        if settings.name_or_path is not None:
            return settings.name_or_path
        name = getattr(self.config, "_name_or_path", None) or ""
        if not settings.from_model_folder or not name:
            return None
        if Path(name).is_dir():
            return name if has_processor_files(Path(name)) else None
        return name  # an HF id: its processor files, if the repo has them (else the family's default)

    def build_image_processor(self, image_processor: Any, default: Callable[..., Any], **family_kwargs: Any) -> Any:
        """``image_processor`` when given; else the one saved in ``processor_source()``
        (``AutoImageProcessor.from_pretrained``) or ``default(**family_kwargs)``, either with the image fields
        set in ``processor_settings`` as overrides (renamed for the family's image processor by ``image_kwargs``)."""
        if image_processor is not None:
            return image_processor
        overrides = self.image_kwargs(self.processor_settings.image_overrides())
        source = self.processor_source()
        if source is not None:
            from transformers import AutoImageProcessor

            try:
                return AutoImageProcessor.from_pretrained(source, **overrides)
            except (OSError, ValueError) as err:
                if self.processor_settings.name_or_path is not None or Path(source).is_dir():
                    raise ValueError(f"processor.name_or_path: cannot load an image processor from {source!r}: "
                                     f"{err}") from err
                # the model's HF id holds no processor files: the family's default below
        return default(**{**family_kwargs, **overrides})

    def image_kwargs(self, settings: dict[str, Any]) -> dict[str, Any]:
        """ProcessorSettings image fields -> this family's image-processor kwargs (default: same names)."""
        return dict(settings)

    def _install_chat_template(self) -> None:
        template = self.processor_settings.chat_template
        if template is not None and template.endswith(".jinja") and "{" not in template:
            path = Path(template)
            if not path.is_file():
                raise FileNotFoundError(f"processor.chat_template: expected a Jinja template or a .jinja file, "
                                        f"received '{template}' (no such file)")
            template = path.read_text()
        if template is None and getattr(self.tokenizer, "chat_template", None) is None:
            folder = self.processor_source()
            template = folder_chat_template(Path(folder)) if folder and Path(folder).is_dir() else None
        if template is not None:
            self.tokenizer.chat_template = template
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"processor.chat_template: the tokenizer ({type(self.tokenizer).__name__}) has no chat template and "
                "the model folder holds none; set processor.chat_template (a Jinja template or a .jinja file), or "
                "processor.use_chat_template: false to tokenize prompts raw, received None"
            )

    # ---- family hooks -------------------------------------------------------------------------
    @abstractmethod
    def process_images(self, images: list[Image.Image]) -> ProcessedImages:
        """RGB PIL images (all samples, in order) -> pixel tensors and token counts."""

    @abstractmethod
    def image_text(self, num_tokens: int) -> str:
        """The text that stands for one image of ``num_tokens`` image tokens."""

    @property
    def image_token_ids(self) -> list[int]:
        """Ids of the vision special tokens (never valid in a completion)."""
        return []

    @property
    def image_token_id(self) -> int | None:
        """The id whose count per sample equals the number of image feature vectors."""
        return None

    def token_kwargs(self, input_ids: Tensor) -> dict[str, Tensor]:
        """Per-token model kwargs derived from ``input_ids`` [B, T] (e.g. Qwen's mm_token_type_ids)."""
        return {}

    def rope_index_fn(self, model) -> RopeIndexFn | None:
        """A function batch -> [3, B, T] M-RoPE positions from ``model``, or None for 1-D RoPE families."""
        return None

    def generate_kwargs(self) -> dict[str, Any]:
        """Extra ``model.generate`` kwargs: pad id, and the vision tokens suppressed in completions."""
        kwargs: dict[str, Any] = {"pad_token_id": self.pad_token_id}
        if self.image_token_ids:
            kwargs["suppress_tokens"] = list(self.image_token_ids)
        return kwargs

    # ---- shared batch building ----------------------------------------------------------------
    def render_prompt(self, prompt: str) -> str:
        """The chat-template text of one user turn plus the assistant generation prompt."""
        if not self.use_chat_template:
            return prompt
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def build_prompts(self, prompts: Sequence[str], images: Any = None) -> MultimodalBatch:
        """A left-padded prompt batch (``loss_mask`` all zero): ``model.generate(**batch.model_inputs())``."""
        prompts = _check_prompts(prompts)
        per_sample = normalize_images(images, len(prompts))
        counts = [len(imgs) for imgs in per_sample]
        if not self.supports_images and any(counts):
            first = next(b for b, n in enumerate(counts) if n)
            raise ValueError(f"images[{first}]: {type(self).__name__} is text-only, received {counts[first]} image(s)")
        flat = [img for imgs in per_sample for img in imgs]
        processed = self.process_images(flat) if flat else ProcessedImages(None, [], [], {})
        texts, start = [], 0
        for b, prompt in enumerate(prompts):
            tokens = processed.tokens_per_image[start : start + counts[b]]
            texts.append(self._expand(b, self.render_prompt(prompt), prompt, tokens))
            start += counts[b]
        ids = self.tokenizer(texts, add_special_tokens=not self.use_chat_template)["input_ids"]
        self._check_image_tokens(ids, processed.tokens_per_image, counts)
        input_ids, attention_mask = _pad([list(x) for x in ids], self.pad_token_id, left=True)
        extra: dict[str, Any] = dict(processed.per_image_kwargs)
        extra.update(self.token_kwargs(input_ids))
        has_images = processed.pixel_values is not None
        return MultimodalBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            loss_mask=torch.zeros_like(attention_mask),
            pixel_values=processed.pixel_values,
            extra_model_kwargs=extra,
            images_per_sample=torch.tensor(counts, dtype=torch.long) if has_images else None,
            pixel_rows_per_image=torch.tensor(processed.pixel_rows_per_image, dtype=torch.long) if has_images else None,
        )

    def append_completions(
        self, prompt_batch: MultimodalBatch, completions: Sequence[Sequence[int]]
    ) -> MultimodalBatch:
        """prompt (padding stripped) + completion per row, right-padded; ``loss_mask`` = completion tokens.

        Reuses the prompt batch's pixel tensors, so images are processed once per rollout.
        """
        completions = self._check_completions(completions, prompt_batch.batch_size)
        rows, spans = [], []
        for b, completion in enumerate(completions):
            prompt = prompt_batch.input_ids[b][prompt_batch.attention_mask[b].bool()].tolist()
            rows.append(prompt + completion)
            spans.append((len(prompt), len(prompt) + len(completion)))
        input_ids, attention_mask = _pad(rows, self.pad_token_id, left=False)
        loss_mask = torch.zeros_like(attention_mask)
        for b, (lo, hi) in enumerate(spans):
            loss_mask[b, lo:hi] = 1
        extra = {k: v for k, v in prompt_batch.extra_model_kwargs.items() if k not in self.token_kwarg_keys}
        extra.update(self.token_kwargs(input_ids))
        return MultimodalBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            loss_mask=loss_mask,
            pixel_values=prompt_batch.pixel_values,
            extra_model_kwargs=extra,
            images_per_sample=prompt_batch.images_per_sample,
            pixel_rows_per_image=prompt_batch.pixel_rows_per_image,
            per_image_keys=prompt_batch.per_image_keys,
        )

    def build_training_batch(
        self, prompts: Sequence[str], images: Any, completions_token_ids: Sequence[Sequence[int]]
    ) -> MultimodalBatch:
        """Right-padded prompt + completion batch; ``loss_mask`` is 1 exactly on the completion tokens
        (including an EOS token when the completion holds one)."""
        return self.append_completions(self.build_prompts(prompts, images), completions_token_ids)

    # ---- checks -------------------------------------------------------------------------------
    def _expand(self, b: int, text: str, prompt: str, tokens: list[int]) -> str:
        if not self.supports_images:
            return text
        found = prompt.count(IMAGE_PLACEHOLDER)
        if found != len(tokens):
            raise ValueError(
                f"prompts[{b}]: found {found} {IMAGE_PLACEHOLDER!r} placeholder(s) but images[{b}] has "
                f"{len(tokens)} image(s); put exactly one {IMAGE_PLACEHOLDER!r} where each image goes"
            )
        pieces = text.split(IMAGE_PLACEHOLDER)
        return pieces[0] + "".join(self.image_text(n) + piece for n, piece in zip(tokens, pieces[1:]))

    def _check_image_tokens(self, ids: list[list[int]], tokens_per_image: list[int], counts: list[int]) -> None:
        if self.image_token_id is None:
            return
        start = 0
        for b, row in enumerate(ids):
            expected = sum(tokens_per_image[start : start + counts[b]])
            start += counts[b]
            found = sum(1 for t in row if t == self.image_token_id)
            if found != expected:
                raise ValueError(
                    f"prompts[{b}]: expected {expected} image tokens for its images, the tokenized prompt has "
                    f"{found}; the prompt text must not contain the model's raw image tokens"
                )

    def _check_completions(self, completions: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
        is_list = isinstance(completions, Sequence) and not isinstance(completions, (str, bytes))
        if not is_list or len(completions) != batch_size:
            raise ValueError(
                f"completions_token_ids: expected a list of {batch_size} token-id lists, received {_summary(completions)}"
            )
        banned = set(self.image_token_ids)
        out = []
        for b, completion in enumerate(completions):
            ids = completion.tolist() if isinstance(completion, Tensor) else completion
            if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
                raise TypeError(f"completions_token_ids[{b}]: expected a list of ints, received {type(completion).__name__}")
            if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
                raise ValueError(
                    f"completions_token_ids[{b}]: expected non-negative int token ids, received {list(ids)[:10]}"
                )
            if banned.intersection(ids):
                raise ValueError(
                    f"completions_token_ids[{b}]: holds vision special token ids {sorted(banned.intersection(ids))}; "
                    "generate with adapter.generate_kwargs() to suppress them"
                )
            out.append(list(ids))
        return out


def split_completions(
    sequences: Tensor, prompt_length: int, eos_token_ids: int | Sequence[int] | None
) -> list[list[int]]:
    """``generate`` output [B, P + C] -> per row the tokens after the prompt, up to and incl. the first EOS."""
    if not isinstance(sequences, Tensor) or sequences.dim() != 2 or sequences.shape[1] < prompt_length:
        raise ValueError(f"sequences: expected a [B, >= {prompt_length}] tensor, received {_summary(sequences)}")
    eos = {eos_token_ids} if isinstance(eos_token_ids, int) else set(eos_token_ids or ())
    out = []
    for row in sequences[:, prompt_length:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        out.append(row[:cut])
    return out


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError(f"prompts: expected a non-empty list of str, received {_summary(prompts)}")
    for b, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompts[{b}]: expected str, received {type(prompt).__name__}")
    return list(prompts)


def _pad(rows: list[list[int]], pad_id: int, left: bool) -> tuple[Tensor, Tensor]:
    """Token rows -> (input_ids [B, T], attention_mask [B, T]) padded on the left or right."""
    width = max(1, max(len(r) for r in rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[b, cols] = torch.tensor(row, dtype=torch.long)
        attention_mask[b, cols] = 1
    return input_ids, attention_mask


def _summary(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return f"a {type(value).__name__} of length {len(value)}"
    return repr(value) if isinstance(value, str) else type(value).__name__
