"""Supervised + actor-critic training of text and vision encoders through cross-modal fusion (Gennet).

One training step:
    s        = CrossModalFusion(text_encoder(captions).tokens, vision_encoder(pixels).tokens)   # [B, H]
    a ~ pi(.|s), V(s), s' = s + E[a]                              (ActorCriticHead; argmax a at eval)
    r        = 1 if a == label else wrong_action_reward           (or the batch's ``rewards`` [B] / [B, T])
               (a batch with logged ``actions`` [B] and ``rewards`` [B], e.g. Parquet reward/action columns,
                trains on that logged feedback: a = the logged action)
    L_sup    = CE(classifier(s'), label)
    L_rl     = -mean(A log pi(a|s)) + value_coef * mean((V(s) - G)^2) - entropy_coef * mean(H(pi)),  A = G - V(s)
    loss     = supervised_weight * L_sup [supervised, combined] + rl_weight * L_rl [rl, combined]
``modalities`` "text" / "image" run only one encoder; the fusion gets that stream alone (ablations).
Validation reports {val}/acc and f1_macro of the mode's predictor (classifier; greedy policy in "rl"),
plus the greedy policy's mean reward, the policy entropy and the losses (loss, loss_supervised, loss_policy,
loss_value), under the same names as the training logs (train/..., per step).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from prismrl.backbones.aligned_towers import load_aligned_encoders
from prismrl.backbones.fusion import CrossModalFusion
from prismrl.backbones.masked_lm import load_dap_encoder_into
from prismrl.choices import check_positive_int, parse_choice
from prismrl.data.images import IMAGENET_MEAN, IMAGENET_STD, ImageTransform
from prismrl.lightning_modules.plumbing import StageModule, built_from_config
from prismrl.optim import OptimizerSettings, encoder_head_adamw
from prismrl.rl.actor_critic import (
    ActorCriticHead,
    ActorCriticOutput,
    actor_critic_losses,
    match_rewards,
    returns_from_rewards,
)


class TrainingMode(str, Enum):
    """Which loss terms train the model."""

    SUPERVISED = "supervised"
    RL = "rl"
    COMBINED = "combined"


# mode -> (supervised term active, rl term active)
MODE_TERMS: dict[TrainingMode, tuple[bool, bool]] = {
    TrainingMode.SUPERVISED: (True, False),
    TrainingMode.RL: (False, True),
    TrainingMode.COMBINED: (True, True),
}


class Modalities(str, Enum):
    """Which input streams reach the fusion."""

    BOTH = "both"
    TEXT = "text"
    IMAGE = "image"


def _field(batch: Any, name: str) -> Any:
    """``batch[name]`` / ``batch.name``; None when absent or an empty tensor (a column the source lacks)."""
    value = batch.get(name) if isinstance(batch, dict) else getattr(batch, name, None)
    return None if isinstance(value, Tensor) and value.numel() == 0 else value


class ActorCriticModule(StageModule):
    """Text + vision encoders -> CrossModalFusion -> ActorCriticHead -> optional classifier (see module docstring).

    Args:
        text_encoder: ``HFTextEncoder``-like (``encode(list[str])`` -> tokens/mask, ``hidden_size``); unused and
            dropped when ``modalities="image"``.
        vision_encoder: ``HFVisionEncoder`` / ``EfficientNetLiteEncoder``-like (``pixels -> tokens``, ``hidden_size``);
            dropped when ``modalities="text"``.
        num_classes: classifier outputs; None = no classifier (then only mode "rl").
        num_actions: policy outputs (default num_classes; the default reward compares actions with labels).
        mode: "supervised" | "rl" | "combined"; ``module.mode = ...`` switches it at run time (validated).
        modalities: "both" | "text" | "image".
        supervised_weight: weight of the supervised (classifier) loss L_sup.
        rl_weight: weight of the actor-critic loss L_rl.
        fusion_dim: width of the fused state (CrossModalFusion).
        fusion_heads: attention heads of each fusion layer.
        fusion_layers: bi-directional cross-attention layers.
        dropout: dropout inside the fusion layers and heads.
        gamma: discount for ``rewards [B, T]`` batches.
        entropy_coef: weight of the policy's entropy bonus in L_rl.
        value_coef: weight of the value loss in L_rl.
        normalize_advantages: whiten the advantages over the batch before the policy loss.
        wrong_action_reward: default reward of a wrong action (0; e.g. -1 as a penalty).
        text_encoder_checkpoint: a DAP folder (``MaskedLMModule.export_encoder``) whose weights and tokenizer
            replace the text encoder's (model type, vocab and width must match).
        alignment_checkpoint: an ``AlignmentModule`` checkpoint whose image tower's encoder weights replace
            vision_encoder's and whose text tower's encoder weights replace text_encoder's (those the modalities
            use; text_encoder_checkpoint, when given, supplies the text encoder instead). Every shape is checked.
        optimizer: AdamW (heads at ``lr``, encoders in their own groups at ``encoder_lr``; no decay on biases and
            norms) + per-step warmup-cosine.
        class_names: names of the classes, reported by ``predict`` (default: the datamodule's ``class_names``).
    """

    def __init__(
        self,
        text_encoder: nn.Module | None = None,
        vision_encoder: nn.Module | None = None,
        num_classes: int | None = 10,
        num_actions: int | None = None,
        mode: str = "supervised",
        modalities: str = "both",
        supervised_weight: float = 1.0,
        rl_weight: float = 1.0,
        fusion_dim: int = 256,
        fusion_heads: int = 4,
        fusion_layers: int = 2,
        dropout: float = 0.1,
        gamma: float = 0.99,
        entropy_coef: float = 0.01,
        value_coef: float = 0.5,
        normalize_advantages: bool = True,
        wrong_action_reward: float = 0.0,
        text_encoder_checkpoint: str | None = None,
        alignment_checkpoint: str | None = None,
        optimizer: OptimizerSettings = OptimizerSettings(lr=1e-3, encoder_lr=1e-5, weight_decay=0.01, warmup_ratio=0.1),
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=[] if built_from_config() else ["text_encoder", "vision_encoder"])
        self.optimizer_settings = optimizer
        self.modalities = parse_choice(Modalities, modalities, "modalities")
        uses_text, uses_image = self.modalities != Modalities.IMAGE, self.modalities != Modalities.TEXT
        for name, encoder, needed in (("text_encoder", text_encoder, uses_text), ("vision_encoder", vision_encoder, uses_image)):
            if needed and not isinstance(getattr(encoder, "hidden_size", None), int):
                raise TypeError(f"{name}: modalities={self.modalities.value!r} needs a module with an int `hidden_size`, "
                                f"received {type(encoder).__name__}")
        if uses_text and not callable(getattr(text_encoder, "encode", None)):
            raise TypeError(f"text_encoder: expected a module with encode(list[str]), received {type(text_encoder).__name__}")
        if num_classes is not None:
            check_positive_int("num_classes", num_classes, minimum=2)
        if num_actions is None and num_classes is None:
            raise ValueError("num_actions: expected an int >= 2 when num_classes is None, received None")
        if num_actions is not None:
            check_positive_int("num_actions", num_actions, minimum=2)
        self.text_encoder = text_encoder if uses_text else None
        self.vision_encoder = vision_encoder if uses_image else None
        if alignment_checkpoint is not None:
            load_aligned_encoders(alignment_checkpoint, vision_encoder=self.vision_encoder,
                                  text_encoder=self.text_encoder if text_encoder_checkpoint is None else None)
        if text_encoder_checkpoint is not None:
            if self.text_encoder is None:
                raise ValueError("text_encoder_checkpoint: modalities='image' uses no text encoder to load it into")
            try:
                load_dap_encoder_into(self.text_encoder, text_encoder_checkpoint)
            except (ValueError, TypeError, OSError) as err:
                raise type(err)(f"text_encoder_checkpoint: cannot load {text_encoder_checkpoint!r}: {err}") from err
        self.fusion = CrossModalFusion(
            text_encoder.hidden_size if uses_text else fusion_dim, vision_encoder.hidden_size if uses_image else fusion_dim,
            fusion_dim, fusion_heads, fusion_layers, dropout,
        )
        self.num_classes, self.num_actions = num_classes, num_actions or num_classes
        if class_names is not None and len(class_names) != (num_classes or self.num_actions):
            raise ValueError(f"class_names: expected {num_classes or self.num_actions} names, received {len(class_names)}")
        self.class_names = list(class_names) if class_names is not None else None
        self.head = ActorCriticHead(fusion_dim, self.num_actions)
        self.classifier = nn.Sequential(nn.LayerNorm(fusion_dim), nn.Linear(fusion_dim, num_classes)) if num_classes else None
        self.mode = mode
        metric_classes = num_classes or self.num_actions
        self.metrics = nn.ModuleDict({
            f"{stage}_{name}": metric(num_classes=metric_classes, average=average)
            for stage in ("val", "test")
            for name, metric, average in (("acc", MulticlassAccuracy, "micro"), ("f1_macro", MulticlassF1Score, "macro"))
        })

    # ----- mode (a callback may switch it) -----
    @property
    def mode(self) -> str:
        return self._mode.value

    @mode.setter
    def mode(self, value: str) -> None:
        parsed = parse_choice(TrainingMode, value, "mode")
        if MODE_TERMS[parsed][0] and self.classifier is None:
            raise ValueError(f"mode: {parsed.value!r} trains a classifier, but num_classes is None; use mode 'rl'")
        self._mode = parsed

    # ----- forward -----
    def fuse(self, batch: Any) -> Tensor:
        """The fused state ``[B, fusion_dim]`` of a batch with ``captions`` and/or ``pixel_values``."""
        text = vision = None
        if self.text_encoder is not None:
            captions = _field(batch, "captions")
            if not isinstance(captions, (list, tuple)) or not captions or not all(isinstance(c, str) for c in captions):
                raise ValueError(f"batch.captions: modalities={self.modalities.value!r} needs a non-empty list of str, "
                                 f"received {type(captions).__name__}")
            text = self.text_encoder.encode(list(captions))
        if self.vision_encoder is not None:
            pixels = _field(batch, "pixel_values")
            if not isinstance(pixels, Tensor) or pixels.dim() != 4:
                raise ValueError(f"batch.pixel_values: modalities={self.modalities.value!r} needs a [B, 3, H, W] tensor, "
                                 f"received {getattr(pixels, 'shape', type(pixels).__name__)}")
            vision = self.vision_encoder(pixels)
        return self.fusion(
            text.tokens if text is not None else None, vision.tokens if vision is not None else None,
            text.mask if text is not None else None, vision.mask if vision is not None else None,
        )

    def forward(self, batch: Any, greedy: bool | None = None, logged_actions: bool = True
                ) -> tuple[ActorCriticOutput, Tensor | None]:
        """(ActorCriticOutput, classifier logits ``[B, num_classes]`` or None).

        A batch with logged ``actions`` [B] (logged bandit feedback) is evaluated at those actions: their
        log-probs, and the reasoned state built from their embeddings; ``logged_actions=False`` ignores them.
        """
        return self._heads(self.fuse(batch), greedy, _field(batch, "actions") if logged_actions else None)

    def _heads(self, state: Tensor, greedy: bool | None, actions: Tensor | None) -> tuple[ActorCriticOutput, Tensor | None]:
        if actions is not None and (actions.dtype != torch.long or actions.shape != state.shape[:1]
                                    or bool(((actions < 0) | (actions >= self.num_actions)).any())):
            raise ValueError(f"batch.actions: expected logged action ids [{state.shape[0]}] in [0, {self.num_actions}), "
                             f"received {actions.dtype} {tuple(actions.shape)} with values {actions.tolist()[:8]}")
        out = self.head(state, greedy=greedy, actions=actions)
        return out, self.classifier(out.reasoned_state) if self.classifier is not None else None

    # ----- losses -----
    def _labels(self, batch: Any, batch_size: int, required: bool) -> Tensor | None:
        labels = _field(batch, "labels")
        if labels is None or labels.numel() == 0 or (not required and bool((labels < 0).all())):
            if required:
                raise ValueError(f"batch.labels: mode {self.mode!r} needs class ids [{batch_size}], received none")
            return None
        upper = min(self.num_classes or self.num_actions, self.num_actions)
        if labels.shape != (batch_size,) or labels.dtype != torch.long:
            raise ValueError(f"batch.labels: expected a long tensor of shape [{batch_size}], received {labels.dtype} {tuple(labels.shape)}")
        bad = ((labels < 0) | (labels >= upper)).nonzero().flatten()
        if len(bad):
            raise ValueError(f"batch.labels: expected class ids in [0, {upper}), received {int(labels[bad[0]])} "
                             f"at position {int(bad[0])}")
        return labels

    def _step(self, batch: Any, stage: str) -> Tensor:
        state, logged = self.fuse(batch), _field(batch, "actions")
        out, class_logits = self._heads(state, None, logged)
        batch_size = out.actions.shape[0]
        rewards = _field(batch, "rewards")
        use_sup, use_rl = MODE_TERMS[self._mode]
        labels = self._labels(batch, batch_size, required=use_sup or rewards is None)
        if rewards is None:
            returns = match_rewards(out.actions, labels, self.hparams.wrong_action_reward)  # [B] one-step bandit
        else:
            returns = returns_from_rewards(rewards, batch_size, self.hparams.gamma, _field(batch, "dones"))
        returns = returns.to(out.values.device)
        hp = self.hparams
        rl = actor_critic_losses(out.log_probs, out.values.float(), returns.float(), out.entropy, hp.normalize_advantages,
                                 hp.entropy_coef, hp.value_coef)
        logged = {"reward": returns.mean(), "entropy": rl.entropy, "loss_value": rl.value, "loss_policy": rl.policy}
        total = rl.total.new_zeros(())
        if use_rl:
            total = total + hp.rl_weight * rl.total
        if class_logits is not None and labels is not None:
            logged["loss_supervised"] = F.cross_entropy(class_logits.float(), labels)
            if use_sup:
                total = total + hp.supervised_weight * logged["loss_supervised"]
        logged["loss"] = total
        on_step = stage == "train"
        for name, value in logged.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "loss", on_step=on_step, on_epoch=not on_step,
                     batch_size=batch_size, sync_dist=not on_step)
        if stage != "train" and labels is not None:
            if logged is not None:  # predict with the model's own (greedy) action, not the logged one
                out, class_logits = self._heads(state, True, None)
            predictions = out.actions if self._mode == TrainingMode.RL or class_logits is None else class_logits.argmax(-1)
            for name in ("acc", "f1_macro"):
                metric = self.metrics[f"{stage}_{name}"]
                metric.update(predictions, labels)
                self.log(f"{stage}/{name}", metric, prog_bar=name == "acc", batch_size=batch_size)
        return total

    # ----- Lightning hooks -----
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Per row: greedy ``actions`` [B], ``values`` [B], ``policy_probs`` [B, A]; with a classifier ``classes`` [B]
        (argmax) and ``class_probs`` [B, C]; the batch's ``labels`` when it has them."""
        out, class_logits = self(batch, greedy=True, logged_actions=False)
        result = {"actions": out.actions, "values": out.values, "policy_probs": out.logits.softmax(-1)}
        if class_logits is not None:
            result.update(classes=class_logits.argmax(-1), class_probs=class_logits.softmax(-1))
        if (labels := _field(batch, "labels")) is not None:
            result["labels"] = labels
        return result

    @torch.no_grad()
    def predict(self, texts: list[str] | None = None, images: list | None = None, image_size: int | None = None,
                image_mean: tuple[float, ...] = IMAGENET_MEAN, image_std: tuple[float, ...] = IMAGENET_STD
                ) -> list[dict[str, Any]]:
        """Class and action with probabilities for raw inputs ``texts[i]`` + ``images[i]`` (PIL images or encoded
        bytes, resized to ``image_size`` (default: the vision encoder's ``config.image_size``) and normalized
        x = (pixel / 255 - mean) / std, as the datamodules do). One dict per input: action, action_probs, value and,
        with a classifier, class_id, class (its name when ``class_names`` is known) and class_probs."""
        batch: dict[str, Any] = {"captions": list(texts) if texts is not None else None}
        if self.vision_encoder is not None:
            size = image_size or getattr(getattr(self.vision_encoder, "config", None), "image_size", None)
            if not isinstance(size, int) or not images:
                raise ValueError(f"images / image_size: expected a non-empty list of images and an int image_size, "
                                 f"received {type(images).__name__} and {size!r}")
            transform = ImageTransform(size, image_mean, image_std)
            pixels = torch.stack([transform(image, where=f"images[{i}]") for i, image in enumerate(images)])
            batch["pixel_values"] = pixels.to(self.device, next(self.vision_encoder.parameters()).dtype)
        if texts is not None and images is not None and len(texts) != len(images):
            raise ValueError(f"texts: expected one text per image ({len(images)}), received {len(texts)}")
        was_training = self.training
        self.eval()
        try:
            out = self.predict_step(batch, 0)
        finally:
            self.train(was_training)
        results = [{"action": int(a), "action_probs": p.tolist(), "value": float(v)}
                   for a, p, v in zip(out["actions"], out["policy_probs"].float(), out["values"].float())]
        for i, row in enumerate(results if "classes" in out else []):
            class_id = int(out["classes"][i])
            row.update(class_id=class_id, class_probs=out["class_probs"][i].float().tolist(),
                       **{"class": self.class_names[class_id] if self.class_names else class_id})
        return results

    def configure_optimizers(self):
        encoders = {id(p) for enc in (self.text_encoder, self.vision_encoder) if enc is not None for p in enc.parameters()}
        return encoder_head_adamw(
            self.named_parameters(), encoders, self.optimizer_settings, int(self.trainer.estimated_stepping_batches),
            no_decay_names=("bias", "norm"), owner="ActorCriticModule",
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["prismrl_actor_critic"] = {"mode": self.mode, "configured_mode": self._configured_mode()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("prismrl_actor_critic", {})
        if saved.get("configured_mode") == self._configured_mode():  # same run config: keep a mode a callback switched to
            self.mode = saved["mode"]

    def _configured_mode(self) -> str:
        return parse_choice(TrainingMode, self.hparams.mode, "mode").value
