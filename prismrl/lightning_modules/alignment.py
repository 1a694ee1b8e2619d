"""Contrastive + Matryoshka alignment of an image tower, a text tower and optionally an audio tower
(the CLIP/SigLIP recipe, tri-modal as in ImageBind-style pairwise alignment).

One training step:
    z_img = image_tower(pixels)                     # [B, D] unnormalized
    z_txt = text_tower(text_dropout(captions))      # [B, D]
    z_aud = audio_tower(log_mel(waveforms))         # [B, D], only with an audio tower
    loss  = sum_{(a, b)} w_ab * L_ab(z_a, z_b | rows where both are present)
    L_ab  = full_dim_weight * L(z_a, z_b) + mrl_weight * mean_w_d L(z_a[:, :d], z_b[:, :d])
for the pairs (image, text) and, with audio, (audio, text) and (audio, image); each pair has its own
temperature. L is the symmetric InfoNCE (CLIP) or sigmoid (SigLIP) loss on L2-normalized features, with
features gathered across ranks (local-loss formulation); samples without a caption or a clip are masked
out of the pairs that need them, not dropped (``prismrl.losses.multimodal``).

Validation embeds the whole validation set and reports, at every Matryoshka dim and the full dim,
image->text and text->image recall@{1,5,10} (items sharing a class are mutual positives) and zero-shot
classification accuracy from class prompts; with audio also audio<->text and audio<->image recall and the
audio zero-shot accuracy at the full dim.

Checkpoints hold every tower weight (later stages load towers from them, ``alignment_checkpoint``), except the frozen
base of a tower loaded with bitsandbytes 8-/4-bit weights: it is rebuilt from its source on load (QLoRA).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from prismrl.backbones.causal_lm import holds_quantized_weights
from prismrl.choices import parse_choice
from prismrl.data.audio import SAMPLING_RATE, to_mono_16k, unpad_waveforms
from prismrl.data.batches import ImageTextBatch
from prismrl.data.text_dropout import apply_text_dropout
from prismrl.evaluation.retrieval import (
    positives_from_labels,
    recall_at_k,
    zero_shot_accuracy,
)
from prismrl.lightning_modules.plumbing import StageModule, built_from_config
from prismrl.losses.contrastive import ContrastiveKind, build_contrastive_loss
from prismrl.losses.matryoshka import (
    MatryoshkaContrastiveLoss,
    validate_matryoshka_dims,
)
from prismrl.losses.multimodal import Pair, multimodal_contrastive_loss, pair_name
from prismrl.optim import OptimizerSettings, encoder_head_adamw

RECALL_KS = (1, 5, 10)
IMAGE_TEXT: Pair = ("image", "text")
AUDIO_PAIRS: tuple[Pair, ...] = (("audio", "text"), ("audio", "image"))
_SHORT = {"image": "i", "text": "t", "audio": "a"}  # metric names: i2t, a2t, a2i, ...


class AlignmentModule(StageModule):
    """Aligns images, texts (and audio) in one embedding space with contrastive + Matryoshka losses.

    Args:
        image_tower: module mapping pixel_values [B, 3, H, W] -> [B, D] (e.g. ``EmbeddingTower``).
        text_tower: module with ``encode_texts(list[str]) -> [B, D]``.
        contrastive: "clip" (softmax InfoNCE) or "siglip" (sigmoid).
        init_temperature: initial temperature (CLIP default 0.07; SigLIP starts at 0.1 via logit_scale=10).
        learnable_temperature: learn the temperature (clamped at 1/100).
        matryoshka_dims: nested prefix dims, strictly increasing and < D; empty disables the MRL term.
        matryoshka_weights: per-dim weights (default uniform).
        sample_single_dim: use one uniformly sampled Matryoshka dim per step instead of all.
        full_dim_weight: weight of the full-dim contrastive loss.
        mrl_weight: weight of the Matryoshka term.
        text_dropout: probability of dropping each caption word during training.
        optimizer: AdamW + warmup-cosine settings; ``lr`` trains pooling/projection/loss parameters,
            ``encoder_lr`` the encoders' own weights (no decay on biases, norms, temperature and bias scalars).
        class_names: class names for zero-shot evaluation (default: the datamodule's ``class_names``).
        zero_shot_templates: prompts with one ``{}`` for the class name (default: the datamodule's, else "a photo of {}").
        audio_tower: optional module mapping (input_features, feature_mask) -> [B, D] whose ``encoder`` has
            ``featurize(waveforms, sampling_rate)`` (e.g. ``EmbeddingTower`` over ``WhisperAudioEncoder``).
        pair_weights: loss weight per pair name ("image_text", "audio_text", "audio_image"); default 1 each.
        compile_towers: run each tower through ``torch.compile`` (in place; the state dict keeps its keys).
    """

    def __init__(
        self,
        image_tower: nn.Module,
        text_tower: nn.Module,
        contrastive: str = "clip",
        init_temperature: float = 0.07,
        learnable_temperature: bool = True,
        matryoshka_dims: list[int] | None = None,
        matryoshka_weights: list[float] | None = None,
        sample_single_dim: bool = False,
        full_dim_weight: float = 1.0,
        mrl_weight: float = 1.0,
        text_dropout: float = 0.0,
        optimizer: OptimizerSettings = OptimizerSettings(
            lr=1e-3, encoder_lr=1e-5, weight_decay=0.05, betas=(0.9, 0.98), warmup_ratio=0.1
        ),
        class_names: list[str] | None = None,
        zero_shot_templates: list[str] | None = None,
        audio_tower: nn.Module | None = None,
        pair_weights: dict[str, float] | None = None,
        compile_towers: bool = False,
    ) -> None:
        super().__init__()
        # Under LightningCLI (and load_from_checkpoint of its checkpoints) the towers are saved as their
        # class_path config; built in Python they are modules whose weights the state dict already holds.
        self.save_hyperparameters(ignore=[] if built_from_config() else ["image_tower", "text_tower", "audio_tower"])
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.optimizer_settings = optimizer
        embed_dim = _tower_dim(image_tower, "image_tower")
        if (text_dim := _tower_dim(text_tower, "text_tower")) != embed_dim:
            raise ValueError(f"text_tower.embed_dim: expected the image tower's embed_dim {embed_dim}, received {text_dim}")
        if not hasattr(text_tower, "encode_texts"):
            raise TypeError(f"text_tower: expected a module with encode_texts(list[str]), received {type(text_tower).__name__}")
        if not 0.0 <= text_dropout < 1.0:
            raise ValueError(f"text_dropout: expected a probability in [0, 1), received {text_dropout!r}")
        dims = [d for d in (matryoshka_dims or []) if d != embed_dim]
        validate_matryoshka_dims(dims, embed_dim, field="matryoshka_dims")
        self.embed_dim = embed_dim
        self.eval_dims = [*dims, embed_dim]
        self.audio_tower = audio_tower
        self.pairs = [IMAGE_TEXT, *(AUDIO_PAIRS if audio_tower is not None else ())]
        if audio_tower is not None:
            _check_audio_tower(audio_tower, embed_dim)
        names = [pair_name(p) for p in self.pairs]
        if unknown := sorted(set(pair_weights or {}) - set(names)):
            raise ValueError(f"pair_weights: expected keys from {names}, received unknown {unknown}")
        self.pair_weights = {p: float((pair_weights or {}).get(pair_name(p), 1.0)) for p in self.pairs}

        kind = parse_choice(ContrastiveKind, contrastive, "contrastive")

        def pair_loss() -> MatryoshkaContrastiveLoss:
            base = build_contrastive_loss(
                kind, init_temperature=init_temperature,
                learnable_temperature=learnable_temperature,
            )
            return MatryoshkaContrastiveLoss(
                base, dims=dims, dim_weights=matryoshka_weights, sample_single_dim=sample_single_dim,
                full_dim_weight=full_dim_weight, mrl_weight=mrl_weight, full_dim=embed_dim,
            )

        self.loss = pair_loss()  # image <-> text
        audio_pairs = {pair_name(p): pair_loss() for p in self.pairs[1:]}  # audio <-> text, audio <-> image
        self.audio_losses = nn.ModuleDict(audio_pairs) if audio_pairs else None
        self.class_names = class_names
        self.zero_shot_templates = zero_shot_templates
        self._val_outputs: list[dict[str, torch.Tensor]] = []
        if compile_towers:
            for tower in (image_tower, text_tower, audio_tower):
                if tower is not None:
                    tower.compile()

    # ----- embedding API (used by callbacks, notebooks, predict) -----
    def embed_images(self, pixel_values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
        """L2-normalized image embeddings [B, dim or D]."""
        return _normalized_prefix(self.image_tower(pixel_values), dim)

    def embed_texts(self, texts: list[str], dim: int | None = None) -> torch.Tensor:
        """L2-normalized text embeddings [B, dim or D]."""
        return _normalized_prefix(self.text_tower.encode_texts(texts), dim)

    def embed_audio(self, waveforms: list, sampling_rate: int = SAMPLING_RATE, dim: int | None = None) -> torch.Tensor:
        """L2-normalized audio embeddings [B, dim or D] of mono (or channel-first) waveforms at any rate."""
        return _normalized_prefix(self._audio_features(waveforms, sampling_rate), dim)

    def _audio_features(self, waveforms: list, sampling_rate: int = SAMPLING_RATE) -> torch.Tensor:
        if self.audio_tower is None:
            raise ValueError("audio_tower: this AlignmentModule was built without an audio tower")
        waveforms = [to_mono_16k(w, sampling_rate, where=f"waveforms[{i}]") for i, w in enumerate(waveforms)]
        inputs = self.audio_tower.encoder.featurize(waveforms)  # log-mel on the CPU
        device = next(self.audio_tower.parameters()).device
        return self.audio_tower(inputs["input_features"].to(device), inputs["feature_mask"].to(device))  # [B, D]

    def _features(self, batch: ImageTextBatch, captions: list[str]) -> tuple[dict, dict]:
        """Unnormalized features {modality: [B, D]} and presence masks {modality: [B] bool or None}."""
        features = {"image": self.image_tower(batch.pixel_values), "text": self.text_tower.encode_texts(captions)}
        presence = {"text": batch.caption_mask if batch.caption_mask.numel() else None}
        if self.audio_tower is not None:
            if not batch.has_audio:
                raise ValueError("batch.audio: the model has an audio_tower but the batch carries no audio "
                                 "(set the datamodule's audio_column / audio_key)")
            # rows without a clip are encoded as a short silence so every rank runs every weight; masked below
            features["audio"] = self._audio_features(unpad_waveforms(batch.audio, batch.audio_lengths))
            presence["audio"] = batch.audio_mask
        return features, presence

    def _pair_losses(self) -> dict[Pair, MatryoshkaContrastiveLoss]:
        audio = {p: self.audio_losses[pair_name(p)] for p in self.pairs[1:]} if self.audio_losses is not None else {}
        return {IMAGE_TEXT: self.loss, **audio}

    # ----- training -----
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.class_names is None:
            self.class_names = getattr(datamodule, "class_names", None)
        if self.zero_shot_templates is None:
            self.zero_shot_templates = getattr(datamodule, "zero_shot_templates", None) or ["a photo of {}"]
        for template in self.zero_shot_templates:
            if template.count("{}") != 1:
                raise ValueError(f"zero_shot_templates: expected exactly one '{{}}' per template, received {template!r}")

    def training_step(self, batch: ImageTextBatch, batch_idx: int) -> torch.Tensor:
        captions = apply_text_dropout(batch.captions, self.hparams.text_dropout) if self.hparams.text_dropout else batch.captions
        features, presence = self._features(batch, captions)
        out = multimodal_contrastive_loss(features, self._pair_losses(), presence, self.pair_weights)
        self.log("train/loss", out.total, prog_bar=True, batch_size=len(batch))
        for pair, loss in self._pair_losses().items():  # image-text keeps the bi-modal names, other pairs a prefix
            tag, part = ("train/" if pair == IMAGE_TEXT else f"train/{pair_name(pair)}/"), out.pairs[pair]
            values = {"loss_full": part.full, "temperature": loss.base_loss.temperature}
            values.update({} if pair == IMAGE_TEXT else {"loss": part.total})
            if part.per_dim:
                values.update({"loss_mrl": part.mrl, **{f"loss_d{d}": v for d, v in part.per_dim.items()}})
            self.log_dict({tag + name: value for name, value in values.items()}, batch_size=len(batch))
        return out.total

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Move an ImageTextBatch field by field (Lightning's generic path deep-copies the dataclass every step)."""
        if not isinstance(batch, ImageTextBatch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        moved = {name: value.to(device, non_blocking=True) for name, value in vars(batch).items()
                 if isinstance(value, torch.Tensor) and value.device != device}
        return dataclasses.replace(batch, **moved) if moved else batch

    # ----- evaluation -----
    def validation_step(self, batch: ImageTextBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: ImageTextBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: ImageTextBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        out = {"image": self.embed_images(batch.pixel_values), "text": self.embed_texts(batch.captions),
               "caption": list(batch.captions), "labels": batch.labels}
        if self.audio_tower is not None and batch.has_audio:
            out["audio"] = self.embed_audio(unpad_waveforms(batch.audio, batch.audio_lengths))
            out["audio_mask"] = batch.audio_mask
        return out

    def _eval_step(self, batch: ImageTextBatch, prefix: str) -> None:
        features, presence = self._features(batch, batch.captions)
        loss = multimodal_contrastive_loss(features, self._pair_losses(), presence, self.pair_weights).total
        self.log(f"{prefix}/loss", loss, batch_size=len(batch), sync_dist=True)
        device = features["image"].device
        labels = batch.labels if batch.labels.numel() else torch.full((len(batch),), -1, dtype=torch.long)
        step = {name: x.float() for name, x in features.items()}
        masks = {"text_mask": batch.text_mask, "audio_mask": batch.audio_mask}  # gathered as ints, compared as bools
        step.update(labels=labels.to(device), **{name: mask.to(device, torch.long) for name, mask in masks.items()})
        self._val_outputs.append(step)

    def _eval_epoch_end(self, prefix: str) -> None:
        if not self._val_outputs:
            return
        gathered = {key: torch.cat([step[key] for step in self._val_outputs]) for key in self._val_outputs[0]}
        self._val_outputs.clear()
        if self.trainer.world_size > 1:  # every rank computes the metrics on the full set; pairs stay aligned
            gathered = {key: self.all_gather(t).flatten(0, 1) for key, t in gathered.items()}
        labels, full = gathered["labels"], self.embed_dim
        rows = {"text": gathered["text_mask"] > 0, "audio": gathered["audio_mask"] > 0}
        rows["image"] = torch.ones_like(rows["text"])
        metrics: dict[str, float] = {}
        for pair in self.pairs:
            both = rows[pair[0]] & rows[pair[1]]  # rows where the pair is present
            if both.any():
                query, gallery = gathered[pair[0]][both], gathered[pair[1]][both]
                recalls = _pair_recalls(query, gallery, labels[both], self.eval_dims, pair)
                headline = "mean_recall@1" if pair == IMAGE_TEXT else f"{pair_name(pair)}_mean_recall@1"
                recalls[headline] = 0.5 * sum(v for k, v in recalls.items() if k.endswith(f"_recall@1_d{full}"))
                metrics.update({f"{prefix}/{k}": v for k, v in recalls.items()})
        class_features = self._class_prompt_features() if self.class_names and (labels >= 0).all() else None
        if class_features is not None:
            for dim in self.eval_dims:
                img, classes = _normalized_prefix(gathered["image"], dim), _normalized_prefix(class_features, dim)
                metrics[f"{prefix}/zero_shot_acc_d{dim}"] = zero_shot_accuracy(img, classes, labels)
            metrics[f"{prefix}/zero_shot_acc"] = metrics[f"{prefix}/zero_shot_acc_d{full}"]
            if "audio" in gathered and rows["audio"].any():  # spoken clip -> nearest class prompt
                audio = gathered["audio"][rows["audio"]]
                metrics[f"{prefix}/audio_zero_shot_acc"] = zero_shot_accuracy(audio, class_features, labels[rows["audio"]])
        headline = f"{prefix}/mean_recall@1"
        # every rank computed the same values on the gathered set; sync_dist only keeps Lightning's bookkeeping uniform
        self.log_dict({k: v for k, v in metrics.items() if k != headline}, sync_dist=True)
        if headline in metrics:  # absent only when no validation sample has a caption
            self.log(headline, metrics[headline], prog_bar=True, sync_dist=True)

    @torch.no_grad()
    def _class_prompt_features(self) -> torch.Tensor:
        """Per-class text features [C, D]: the mean of the normalized prompt embeddings of each class."""
        templates = self.zero_shot_templates or ["a photo of {}"]
        prompts = [template.format(name) for name in self.class_names for template in templates]
        features = F.normalize(self.text_tower.encode_texts(prompts).float(), dim=-1)
        return features.view(len(self.class_names), len(templates), -1).mean(dim=1)  # [C, D] (normalized per dim later)

    # ----- optimization -----
    def configure_optimizers(self):
        towers = (self.image_tower, self.text_tower, *([self.audio_tower] if self.audio_tower is not None else []))
        encoders = {id(p) for tower in towers for p in _encoder_parameters(tower)}
        return encoder_head_adamw(
            self.named_parameters(), encoders, self.optimizer_settings, int(self.trainer.estimated_stepping_batches),
            no_decay_names=("logit_scale", "logit_bias", "bias"),
            owner="AlignmentModule (every tower and the loss are frozen)",
        )

    def rebuilt_frozen_children(self) -> tuple[str, ...]:
        """Towers with bitsandbytes base weights: their frozen base is left out of checkpoints (see the module doc)."""
        return tuple(n for n in ("image_tower", "text_tower", "audio_tower") if holds_quantized_weights(getattr(self, n)))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["prismrl_zero_shot"] = {"class_names": self.class_names, "templates": self.zero_shot_templates}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("prismrl_zero_shot", {})
        self.class_names = self.class_names or saved.get("class_names")
        self.zero_shot_templates = self.zero_shot_templates or saved.get("templates")


def _tower_dim(tower: nn.Module, field: str) -> int:
    dim = getattr(tower, "embed_dim", None)
    if not isinstance(dim, int) or dim <= 0:
        raise TypeError(f"{field}: expected a module with a positive int `embed_dim`, received {type(tower).__name__}")
    return dim


def _check_audio_tower(tower: nn.Module, embed_dim: int) -> None:
    if _tower_dim(tower, "audio_tower") != embed_dim:
        raise ValueError(
            f"audio_tower.embed_dim: expected the image tower's embed_dim {embed_dim}, received {tower.embed_dim}"
        )
    if not callable(getattr(getattr(tower, "encoder", None), "featurize", None)):
        raise TypeError(
            "audio_tower: expected a tower whose encoder has featurize(waveforms, sampling_rate) (e.g. an "
            f"EmbeddingTower over WhisperAudioEncoder), received {type(tower).__name__} with encoder "
            f"{type(getattr(tower, 'encoder', None)).__name__}"
        )


def _pair_recalls(query: torch.Tensor, gallery: torch.Tensor, labels: torch.Tensor, dims: list[int],
                  pair: Pair) -> dict[str, float]:
    """``{a}2{b}_recall@k_d{dim}`` and ``{b}2{a}_...`` for paired rows [N, D] (rows sharing a class are positives)."""
    positives = positives_from_labels(labels, labels) if (labels >= 0).any() else torch.eye(len(labels), dtype=torch.bool)
    forward, backward = (f"{_SHORT[x]}2{_SHORT[y]}" for x, y in (pair, pair[::-1]))
    metrics: dict[str, float] = {}
    for dim in dims:
        similarity = _normalized_prefix(query, dim) @ _normalized_prefix(gallery, dim).T  # [N, N]
        for name, sim, pos in ((forward, similarity, positives), (backward, similarity.T, positives.T)):
            metrics.update({f"{name}_recall@{k}_d{dim}": v for k, v in recall_at_k(sim, pos, RECALL_KS).items()})
    return metrics


def _encoder_parameters(tower: nn.Module) -> list[nn.Parameter]:
    encoder = getattr(tower, "encoder", None)
    return list(encoder.parameters()) if isinstance(encoder, nn.Module) else []


def _normalized_prefix(features: torch.Tensor, dim: int | None) -> torch.Tensor:
    """L2-normalize the first ``dim`` coordinates: [B, D] -> [B, dim]."""
    return F.normalize(features if dim is None else features[..., :dim], dim=-1)
