"""Vision-language instruction tuning (Edge Glass stage 2): answer questions about images (and spoken clips).

One training step:
    prefix = Projector(PerceiverResampler(vision_encoder(pixels)))        # [B, L, H_dec] (VisualPrefix)
    prefix = [prefix ; Projector_a(Resampler_a(audio_encoder(clips)))]    # [B, L + L_a, H_dec] with audio_encoder
    q      = text_dropout(questions)                                       # words dropped from the prompt
    loss   = decoder(prefix, q, answers, prefix_mask).loss                 # CE on answer tokens only
A batch without any clip gets no audio tokens (P = L); in a batch with some, the audio positions of rows without a
clip are masked out (``prefix_mask`` False), so those rows are decoded as if they had no audio tokens.
with the decoder either a causal LM fed the prefix as input embeddings (``PrefixLMDecoder``, LoRA or full) or the
tiny recursive decoder (``RecursiveDecoder``). The vision encoder may start from an ``AlignmentModule``
checkpoint (``alignment_checkpoint``) and is frozen by default.

Validation reports the loss, token accuracy (teacher-forced argmax on answer tokens), and exact-match accuracy of
the greedy ``generate`` answers (whitespace, case and a trailing full stop ignored), overall and per question type.

Checkpoints leave out the frozen pretrained weights (a LoRA decoder's base LM, a frozen pretrained vision encoder):
they are reloaded from their source when the module is built (``StageModule.rebuilt_frozen_children``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from prismrl.backbones.aligned_towers import load_aligned_encoders
from prismrl.backbones.answer_masking import IGNORE_INDEX
from prismrl.backbones.audio_prefix import AudioPrefix
from prismrl.backbones.sharding import gathered
from prismrl.backbones.visual_prefix import VisualPrefix
from prismrl.choices import check_positive_float
from prismrl.data.audio import pad_waveforms
from prismrl.data.text_dropout import apply_text_dropout
from prismrl.lightning_modules.plumbing import StageModule, built_from_config
from prismrl.optim import OptimizerSettings, adamw_with_schedule


def normalize_answer(text: str) -> str:
    """Lower case, inner whitespace collapsed, surrounding whitespace and one trailing '.' removed."""
    text = " ".join(text.lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> Tensor:
    """[B] float: 1 where ``normalize_answer(prediction) == normalize_answer(reference)``."""
    if len(predictions) != len(references):
        raise ValueError(f"predictions: expected {len(references)} strings, received {len(predictions)}")
    return torch.tensor([float(normalize_answer(p) == normalize_answer(r)) for p, r in zip(predictions, references)])


def token_correct(logits: Tensor, labels: Tensor) -> Tensor:
    """Flat [N] float: 1 where argmax(logits) equals the label, over the positions whose label is not -100."""
    where = labels != IGNORE_INDEX
    return (logits.argmax(-1)[where] == labels[where]).float()


class VisionLanguageSFTModule(StageModule):
    """vision (+ audio) encoder -> Perceiver resampler -> projector -> answer decoder, trained on answer tokens only.

    Args:
        vision_encoder: an ``EmbeddingTower`` (e.g. the image tower of an alignment config) or a bare encoder.
        decoder: ``PrefixLMDecoder`` or ``RecursiveDecoder`` (anything with ``hidden_size``,
            ``forward(prefix, questions, answers)`` and ``generate(prefix, questions, max_new_tokens)``).
        alignment_checkpoint: an ``AlignmentModule`` checkpoint whose image tower is loaded into ``vision_encoder``
            (and its audio tower into ``audio_encoder``; shapes must match; ValueError otherwise).
        freeze_vision: keep the vision encoder frozen (eval mode).
        use_aligned_embedding: give the resampler the tower's aligned embedding as one more token.
        num_latents: learned latent queries of the Perceiver resampler (= the visual prefix length).
        resampler_dim: width of the resampler (None = the vision encoder's hidden size).
        resampler_depth: resampler layers (cross-attention + feed-forward).
        resampler_heads: attention heads of the resampler.
        resampler_head_dim: width of each resampler attention head.
        projector_hidden_dim: hidden width of the 2-layer MLP projector into the decoder (None = the decoder's).
        text_dropout: probability of dropping each question word in training.
        max_new_tokens: generation budget in validation (None = the decoder's default).
        question_types: per-type exact-match metrics (``prismrl fit`` links the datamodule's ``question_types``
            here; None = overall metrics only).
        optimizer: AdamW with a per-step warmup-cosine schedule; ``optimizer.lr`` trains the resampler and
            projector, ``optimizer.encoder_lr`` the vision encoder when it is not frozen.
        decoder_lr: the decoder's trainable weights (None = ``optimizer.lr``).
        audio_encoder: an ``EmbeddingTower`` over ``WhisperAudioEncoder`` (e.g. the audio tower of a tri-modal
            alignment config) or a bare encoder with ``featurize``; None = no audio (clips in batches are ignored).
        freeze_audio: keep the audio encoder frozen (eval mode).
        audio_num_latents: latents of the audio resampler (= the audio tokens appended to the prefix).
        audio_resampler_dim: width of the audio resampler (None = the audio encoder's hidden size); depth, heads,
            head width and projector width are the vision resampler's.
    """

    def __init__(
        self,
        vision_encoder: nn.Module,
        decoder: nn.Module,
        alignment_checkpoint: str | None = None,
        freeze_vision: bool = True,
        use_aligned_embedding: bool = False,
        num_latents: int = 8,
        resampler_dim: int | None = None,
        resampler_depth: int = 2,
        resampler_heads: int = 4,
        resampler_head_dim: int = 32,
        projector_hidden_dim: int | None = None,
        text_dropout: float = 0.0,
        max_new_tokens: int | None = None,
        question_types: list[str] | None = None,
        optimizer: OptimizerSettings = OptimizerSettings(lr=1e-3, encoder_lr=1e-5, weight_decay=0.01, warmup_ratio=0.1),
        decoder_lr: float | None = None,
        audio_encoder: nn.Module | None = None,
        freeze_audio: bool = True,
        audio_num_latents: int = 4,
        audio_resampler_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=[] if built_from_config() else ["vision_encoder", "decoder", "audio_encoder"])
        if not isinstance(getattr(decoder, "hidden_size", None), int) or not callable(getattr(decoder, "generate", None)):
            raise TypeError(f"decoder: expected a module with an int hidden_size and generate(prefix, questions), "
                            f"received {type(decoder).__name__}")
        if not 0.0 <= text_dropout < 1.0:
            raise ValueError(f"text_dropout: expected a probability in [0, 1), received {text_dropout!r}")
        if decoder_lr is not None:
            check_positive_float("decoder_lr", decoder_lr)
        self.optimizer_settings = optimizer
        if alignment_checkpoint is not None:
            load_aligned_encoders(alignment_checkpoint, vision_encoder=vision_encoder, audio_encoder=audio_encoder)
        self.visual = VisualPrefix(
            vision_encoder, decoder.hidden_size, num_latents, resampler_dim, resampler_depth, resampler_heads,
            resampler_head_dim, projector_hidden_dim, use_aligned_embedding, freeze_vision,
        )
        self.audio = None if audio_encoder is None else AudioPrefix(
            audio_encoder, decoder.hidden_size, num_latents=audio_num_latents, resampler_dim=audio_resampler_dim,
            depth=resampler_depth, num_heads=resampler_heads, head_dim=resampler_head_dim,
            projector_hidden_dim=projector_hidden_dim, use_aligned_embedding=use_aligned_embedding, freeze=freeze_audio,
        )
        self.decoder = decoder
        self.question_types = list(question_types or [])
        self.metrics = nn.ModuleDict()

    # ----- inference API -----
    def forward(self, pixel_values: Tensor, audio: Tensor | None = None,
                audio_lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(prefix ``[B, P, decoder.hidden_size]``, prefix_mask ``[B, P]`` bool or None = all kept): the visual
        latents, then the audio latents when the module has an audio encoder and some row has a clip
        (``audio [B, N]`` zero-padded 16 kHz waveforms, ``audio_lengths [B]``, 0 = no clip)."""
        prefix = self.visual(pixel_values)  # [B, L, H]
        if self.audio is None or audio is None or audio_lengths is None or not bool((audio_lengths > 0).any()):
            return prefix, None
        spoken, present = self.audio.batch_prefix(audio, audio_lengths)  # [B, L_a, H], [B]
        prefix = torch.cat([prefix, spoken.to(prefix.dtype)], dim=1)  # [B, L + L_a, H]
        if bool(present.all()):
            return prefix, None
        keep = torch.ones(prefix.shape[:2], dtype=torch.bool, device=prefix.device)  # [B, L + L_a]
        keep[:, -spoken.shape[1]:] = present[:, None].to(prefix.device)
        return prefix, keep

    def _decoder_kwargs(self, prefix_mask: Tensor | None) -> dict[str, Tensor]:
        return {} if prefix_mask is None else {"prefix_mask": prefix_mask}

    @torch.no_grad()
    def generate(self, images: Tensor, questions: Sequence[str] | str, max_new_tokens: int | None = None,
                 audio: Sequence[Tensor | None] | None = None) -> list[str]:
        """Greedy answers to ``questions`` about ``images`` (normalized pixels ``[B, 3, H, W]`` or ``[3, H, W]``;
        one question string is asked of every image); ``audio``: one mono 16 kHz waveform ``[N]`` (or None) per
        image, heard with it."""
        if not isinstance(images, Tensor) or images.dim() not in (3, 4):
            raise ValueError(f"images: expected a [B, 3, H, W] or [3, H, W] tensor, received "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        images = images[None] if images.dim() == 3 else images
        questions = [questions] * len(images) if isinstance(questions, str) else list(questions)
        clips = None
        if audio is not None:
            if len(audio) != len(images):
                raise ValueError(f"audio: expected {len(images)} waveforms or None (one per image), received {len(audio)}")
            clips = pad_waveforms([a if a is not None and a.numel() else None for a in audio])  # [B, N], [B]
        was_training = self.training
        self.eval()
        try:
            return self._answers(images.to(self.device), questions, *(clips or (None, None)),
                                 max_new_tokens=max_new_tokens)
        finally:
            self.train(was_training)

    def _answers(self, pixel_values: Tensor, questions: Sequence[str], audio: Tensor | None = None,
                 audio_lengths: Tensor | None = None, max_new_tokens: int | None = None) -> list[str]:
        prefix, prefix_mask = self(pixel_values, audio, audio_lengths)
        with gathered(self.decoder):  # FSDP2: weights gathered once, not per generated token
            return self.decoder.generate(prefix, questions, max_new_tokens or self.hparams.max_new_tokens,
                                         **self._decoder_kwargs(prefix_mask))

    @staticmethod
    def _audio_of(batch: Any) -> tuple[Tensor | None, Tensor | None]:
        lengths = getattr(batch, "audio_lengths", None)
        return (batch.audio, lengths) if lengths is not None and lengths.numel() else (None, None)

    # ----- training -----
    def setup(self, stage: str) -> None:
        for stage_name in ("val", "test"):
            for name in ["loss", "token_acc", "exact_match", *(f"exact_match_{t}" for t in self.question_types)]:
                if f"{stage_name}_{name}" not in self.metrics:
                    self.metrics[f"{stage_name}_{name}"] = MeanMetric().to(self.device)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        p = self.hparams.text_dropout
        questions = apply_text_dropout(batch.questions, p) if p else batch.questions
        prefix, prefix_mask = self(batch.pixel_values, *self._audio_of(batch))
        out = self.decoder(prefix, questions, batch.answers, **self._decoder_kwargs(prefix_mask))
        batch_size = len(batch)
        self.log("train/loss", out.loss, prog_bar=True, batch_size=batch_size)
        self.log("train/token_acc", token_correct(out.logits, out.labels).mean(), batch_size=batch_size)
        return out.loss

    # ----- evaluation -----
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_step(self, batch: Any, stage: str) -> None:
        prefix, prefix_mask = self(batch.pixel_values, *self._audio_of(batch))
        out = self.decoder(prefix, batch.questions, batch.answers, **self._decoder_kwargs(prefix_mask))
        with gathered(self.decoder):
            predictions = self.decoder.generate(prefix, batch.questions, self.hparams.max_new_tokens,
                                                **self._decoder_kwargs(prefix_mask))
        hits = exact_match(predictions, batch.answers).to(self.device)  # [B]
        updates = {"loss": (out.loss.detach(), len(batch)), "exact_match": (hits, None)}
        correct = token_correct(out.logits, out.labels)
        if correct.numel():
            updates["token_acc"] = (correct, None)
        for question_type in self.question_types:
            chosen = torch.tensor([t == question_type for t in batch.question_types], device=self.device)
            if len(batch.question_types) == len(batch) and bool(chosen.any()):
                updates[f"exact_match_{question_type}"] = (hits[chosen], None)
        for name, (value, weight) in updates.items():
            metric = self.metrics[f"{stage}_{name}"]
            if weight is None:
                metric.update(value)
            else:
                metric.update(value, weight)
            self.log(f"{stage}/{name}", metric, prog_bar=name == "exact_match", on_epoch=True, batch_size=len(batch))

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, list]:
        """One row per sample: sample_id, question, prediction, answer (the reference, "" if none), question_type,
        has_audio, exact_match (None without a reference)."""
        audio, lengths = self._audio_of(batch)
        predictions = self._answers(batch.pixel_values, batch.questions, audio, lengths)
        references = list(getattr(batch, "answers", None) or [""] * len(predictions))
        ids = list(getattr(batch, "sample_ids", None) or [""] * len(predictions))
        types = list(getattr(batch, "question_types", None) or [""] * len(predictions))
        heard = [False] * len(predictions) if lengths is None else (lengths > 0).tolist()
        return {"sample_id": ids, "question": list(batch.questions), "prediction": predictions, "answer": references,
                "question_type": types, "has_audio": heard,
                "exact_match": [bool(normalize_answer(p) == normalize_answer(r)) if r else None
                                for p, r in zip(predictions, references)]}

    # ----- optimization -----
    def rebuilt_frozen_children(self) -> tuple[str, ...]:
        return ("visual", "decoder") if self.audio is None else ("visual", "audio", "decoder")

    def configure_optimizers(self):
        """AdamW over three groups (each split into decayed / undecayed): resamplers + projectors at ``optimizer.lr``,
        decoder at ``decoder_lr`` (default ``optimizer.lr``), vision and audio encoders at ``optimizer.encoder_lr``."""
        settings = self.optimizer_settings
        vision = {id(p) for p in self.visual.vision_encoder.parameters()}
        if self.audio is not None:
            vision |= {id(p) for p in self.audio.audio_encoder.parameters()}
        decoder = {id(p) for p in self.decoder.parameters()}
        named = list(self.named_parameters())
        lr_groups = [
            ([(n, p) for n, p in named if id(p) not in vision | decoder], settings.lr),
            ([(n, p) for n, p in named if id(p) in decoder], self.hparams.decoder_lr or settings.lr),
            ([(n, p) for n, p in named if id(p) in vision], settings.encoder_learning_rate),
        ]
        return adamw_with_schedule(settings, lr_groups, int(self.trainer.estimated_stepping_batches),
                                   no_decay_names=("bias", "norm", "latents", "position", "y_init", "z_init"),
                                   owner="VisionLanguageSFTModule")


__all__ = ["VisionLanguageSFTModule", "exact_match", "normalize_answer", "token_correct"]
