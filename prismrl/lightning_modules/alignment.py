"""Contrastive + Matryoshka alignment of an image tower and a text tower (the CLIP/SigLIP recipe).

One training step:
    z_img = image_tower(pixels)                     # [B, D] unnormalized
    z_txt = text_tower(text_dropout(captions))      # [B, D]
    loss  = full_dim_weight * L(z_img, z_txt)
          + mrl_weight * mean_w_d L(z_img[:, :d], z_txt[:, :d])   for d in matryoshka_dims (or one sampled d)
where L is the symmetric InfoNCE (CLIP) or sigmoid (SigLIP) loss on L2-normalized features, with
features gathered across ranks (local-loss formulation).

Validation embeds the whole validation set and reports, at every Matryoshka dim and the full dim,
image->text and text->image recall@{1,5,10} (items sharing a class are mutual positives) and
zero-shot classification accuracy from class prompts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import nn

from prismrl.data.batches import ImageTextBatch
from prismrl.data.loaders import load_pending_dataloader_states
from prismrl.data.text_dropout import apply_text_dropout
from prismrl.evaluation.retrieval import positives_from_labels, recall_at_k, zero_shot_accuracy
from prismrl.losses.contrastive import ContrastiveKind, build_contrastive_loss
from prismrl.losses.matryoshka import MatryoshkaContrastiveLoss, validate_matryoshka_dims
from prismrl.lightning_modules.hparams import built_from_config
from prismrl.optim import encoder_head_adamw

RECALL_KS = (1, 5, 10)


class AlignmentModule(LightningModule):
    """Aligns images and texts in one embedding space with contrastive + Matryoshka losses.

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
        lr, encoder_lr: learning rate of pooling/projection/loss parameters, and of the encoders' own weights.
        weight_decay, betas: AdamW settings (no decay on biases, norms, temperature and bias scalars).
        warmup_ratio, min_lr_ratio: linear warmup over this fraction of steps, then cosine to min_lr_ratio * lr.
        class_names: class names for zero-shot evaluation (default: the datamodule's ``class_names``).
        zero_shot_templates: prompts with one ``{}`` for the class name (default: the datamodule's, else "a photo of {}").
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
        lr: float = 1e-3,
        encoder_lr: float = 1e-5,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_ratio: float = 0.1,
        min_lr_ratio: float = 0.0,
        class_names: list[str] | None = None,
        zero_shot_templates: list[str] | None = None,
    ) -> None:
        super().__init__()
        # Under LightningCLI (and load_from_checkpoint of its checkpoints) the towers are saved as their
        # class_path config; built in Python they are modules whose weights the state dict already holds.
        self.save_hyperparameters(ignore=[] if built_from_config() else ["image_tower", "text_tower"])
        self.image_tower = image_tower
        self.text_tower = text_tower
        embed_dim = _tower_dim(image_tower, "image_tower")
        if _tower_dim(text_tower, "text_tower") != embed_dim:
            raise ValueError(
                f"text_tower.embed_dim: expected the image tower's embed_dim {embed_dim}, "
                f"received {_tower_dim(text_tower, 'text_tower')}"
            )
        if not hasattr(text_tower, "encode_texts"):
            raise TypeError(f"text_tower: expected a module with encode_texts(list[str]), received {type(text_tower).__name__}")
        if not 0.0 <= text_dropout < 1.0:
            raise ValueError(f"text_dropout: expected a probability in [0, 1), received {text_dropout!r}")
        dims = [d for d in (matryoshka_dims or []) if d != embed_dim]
        validate_matryoshka_dims(dims, embed_dim)
        self.embed_dim = embed_dim
        self.eval_dims = [*dims, embed_dim]
        base = build_contrastive_loss(
            ContrastiveKind(contrastive), init_temperature=init_temperature,
            learnable_temperature=learnable_temperature,
        )
        self.loss = MatryoshkaContrastiveLoss(
            base, dims=dims, dim_weights=matryoshka_weights, sample_single_dim=sample_single_dim,
            full_dim_weight=full_dim_weight, mrl_weight=mrl_weight, full_dim=embed_dim,
        )
        self.class_names = class_names
        self.zero_shot_templates = zero_shot_templates
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # ----- embedding API (used by callbacks, notebooks, predict) -----
    def embed_images(self, pixel_values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
        """L2-normalized image embeddings [B, dim or D]."""
        return _normalized_prefix(self.image_tower(pixel_values), dim)

    def embed_texts(self, texts: list[str], dim: int | None = None) -> torch.Tensor:
        """L2-normalized text embeddings [B, dim or D]."""
        return _normalized_prefix(self.text_tower.encode_texts(texts), dim)

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

    def on_train_start(self) -> None:
        load_pending_dataloader_states(self.trainer)  # exact mid-epoch resume despite estimated_stepping_batches

    def training_step(self, batch: ImageTextBatch, batch_idx: int) -> torch.Tensor:
        captions = apply_text_dropout(batch.captions, self.hparams.text_dropout) if self.hparams.text_dropout else batch.captions
        image_features = self.image_tower(batch.pixel_values)  # [B, D]
        text_features = self.text_tower.encode_texts(captions)  # [B, D]
        out = self.loss(image_features, text_features)
        batch_size = len(batch)
        self.log("train/loss", out.total, prog_bar=True, batch_size=batch_size)
        self.log("train/loss_full", out.full, batch_size=batch_size)
        if out.per_dim:
            self.log("train/loss_mrl", out.mrl, batch_size=batch_size)
            for dim, value in out.per_dim.items():
                self.log(f"train/loss_d{dim}", value, batch_size=batch_size)
        self.log("train/temperature", self.loss.base_loss.temperature, batch_size=batch_size)
        return out.total

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
        return {"image": self.embed_images(batch.pixel_values), "text": self.embed_texts(batch.captions), "labels": batch.labels}

    def _eval_step(self, batch: ImageTextBatch, prefix: str) -> None:
        image_features = self.image_tower(batch.pixel_values)
        text_features = self.text_tower.encode_texts(batch.captions)
        self.log(f"{prefix}/loss", self.loss(image_features, text_features).total, batch_size=len(batch), sync_dist=True)
        labels = batch.labels if batch.labels.numel() else torch.full((len(batch),), -1, dtype=torch.long)
        self._val_outputs.append((image_features.float(), text_features.float(), labels.to(image_features.device)))

    def _eval_epoch_end(self, prefix: str) -> None:
        if not self._val_outputs:
            return
        images, texts, labels = (torch.cat(parts) for parts in zip(*self._val_outputs))
        self._val_outputs.clear()
        if self.trainer.world_size > 1:  # every rank computes the metrics on the full set
            images, texts, labels = (self.all_gather(t).flatten(0, 1) for t in (images, texts, labels))  # pairs stay aligned
        positives = positives_from_labels(labels, labels) if (labels >= 0).any() else torch.eye(len(labels), dtype=torch.bool)
        class_features = self._class_prompt_features() if self.class_names and (labels >= 0).all() else None
        metrics: dict[str, float] = {}
        for dim in self.eval_dims:
            img, txt = _normalized_prefix(images, dim), _normalized_prefix(texts, dim)
            similarity = img @ txt.T  # [N, N]
            for k, value in recall_at_k(similarity, positives, RECALL_KS).items():
                metrics[f"{prefix}/i2t_recall@{k}_d{dim}"] = value
            for k, value in recall_at_k(similarity.T, positives.T, RECALL_KS).items():
                metrics[f"{prefix}/t2i_recall@{k}_d{dim}"] = value
            if class_features is not None:
                metrics[f"{prefix}/zero_shot_acc_d{dim}"] = zero_shot_accuracy(img, _normalized_prefix(class_features, dim), labels)
        full = self.embed_dim
        metrics[f"{prefix}/mean_recall@1"] = 0.5 * (metrics[f"{prefix}/i2t_recall@1_d{full}"] + metrics[f"{prefix}/t2i_recall@1_d{full}"])
        if class_features is not None:
            metrics[f"{prefix}/zero_shot_acc"] = metrics[f"{prefix}/zero_shot_acc_d{full}"]
        headline = f"{prefix}/mean_recall@1"
        # every rank computed the same values on the gathered set; sync_dist only keeps Lightning's bookkeeping uniform
        self.log_dict({k: v for k, v in metrics.items() if k != headline}, sync_dist=True)
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
        hp = self.hparams
        encoders = {id(p) for tower in (self.image_tower, self.text_tower) for p in _encoder_parameters(tower)}
        return encoder_head_adamw(
            self.named_parameters(), encoders, lr=hp.lr, encoder_lr=hp.encoder_lr, weight_decay=hp.weight_decay,
            betas=hp.betas, total_steps=int(self.trainer.estimated_stepping_batches), warmup_ratio=hp.warmup_ratio,
            min_lr_ratio=hp.min_lr_ratio, no_decay_names=("logit_scale", "logit_bias", "bias"),
            owner="AlignmentModule (every tower and the loss are frozen)",
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["prismrl_zero_shot"] = {"class_names": self.class_names, "templates": self.zero_shot_templates}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("prismrl_zero_shot", {})
        self.class_names = self.class_names or saved.get("class_names")
        self.zero_shot_templates = self.zero_shot_templates or saved.get("templates")


def _tower_dim(tower: nn.Module, field: str) -> int:
    dim = getattr(tower, "embed_dim", None)
    if not isinstance(dim, int) or dim <= 0:
        raise TypeError(f"{field}: expected a module with a positive int `embed_dim`, received {type(tower).__name__}")
    return dim


def _encoder_parameters(tower: nn.Module) -> list[nn.Parameter]:
    encoder = getattr(tower, "encoder", None)
    return list(encoder.parameters()) if isinstance(encoder, nn.Module) else []


def _normalized_prefix(features: torch.Tensor, dim: int | None) -> torch.Tensor:
    """L2-normalize the first ``dim`` coordinates: [B, D] -> [B, dim]."""
    return F.normalize(features if dim is None else features[..., :dim], dim=-1)
