"""Domain-adaptive pre-training (DAP): continued masked-LM training of a text encoder, with domain tokens.

One training step (labels = the original id at the ~15% selected positions, -100 elsewhere):
    hidden = encoder(input_ids, attention_mask)       # [B, T, H]
    picked = labels != -100                           # [B, T]
    logits = mlm_head(hidden[picked])                 # [N, V]: the head runs on the N selected positions only
    loss   = mean_n CE(logits_n, labels_n)
Validation on held-out domain text: val/loss = token-level mean NLL over all selected positions of the
split, val/perplexity = exp(val/loss), val/masked_accuracy = mean_n [argmax logits_n == labels_n].

Domain tokens are new special tokens; their input (and untied output) embedding rows start at the mean
of the existing rows, their output bias at the mean bias. ``export_encoder`` writes the encoder without the
MLM head plus the tokenizer, a folder that ``HFTextEncoder(model_name_or_path=folder)`` loads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from prismrl.backbones.answer_masking import IGNORE_INDEX
from prismrl.backbones.masked_lm import (
    MLM_HEADS,
    build_masked_lm,
    init_domain_embeddings,
    load_domain_tokenizer,
    validate_domain_tokens,
)
from prismrl.backbones.shipped import check_exactly_one
from prismrl.backbones.text import DEFAULT_TINY_TOKENIZER
from prismrl.lightning_modules.plumbing import StageModule
from prismrl.optim import OptimizerSettings, adamw_with_schedule

log = logging.getLogger(__name__)


class MaskedLMModule(StageModule):
    """Continued masked-LM pre-training of a BERT/MiniLM, RoBERTa or ModernBERT encoder on domain text.

    Args:
        model_name_or_path / tiny_config: exactly one; an HF id, folder or "shipped:<alias>" (a model saved
            without an MLM head, like the shipped MiniLM, gets a newly initialized head: a log line says so),
            or a transformers config dict with "model_type" (random init).
        tokenizer_name_or_path: default ``model_name_or_path``, else the shipped MiniLM tokenizer.
        domain_tokens: new special tokens, e.g. ["<DOMAIN_NEWS>"]; one already in the vocabulary -> ValueError.
        optimizer: AdamW over every trainable parameter at ``lr`` (``encoder_lr`` unused), linear warmup then
            cosine decay.
        export_dir: when set, ``export_encoder(export_dir)`` runs at the end of ``fit`` (final weights).
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        tiny_config: dict | None = None,
        tokenizer_name_or_path: str | None = None,
        domain_tokens: list[str] | None = None,
        optimizer: OptimizerSettings = OptimizerSettings(
            lr=5e-5, weight_decay=0.01, betas=(0.9, 0.98), warmup_ratio=0.06
        ),
        attn_implementation: str = "sdpa",
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optimizer_settings = optimizer
        check_exactly_one(model_name_or_path, tiny_config)
        self.domain_tokens = validate_domain_tokens(domain_tokens)
        self.tokenizer_name_or_path = tokenizer_name_or_path or model_name_or_path or DEFAULT_TINY_TOKENIZER
        self.tokenizer = load_domain_tokenizer(self.tokenizer_name_or_path, self.domain_tokens)
        self.model = build_masked_lm(model_name_or_path, tiny_config, self.tokenizer, attn_implementation)
        self.domain_token_ids = init_domain_embeddings(self.model, self.tokenizer, self.domain_tokens)
        num_rows = self.model.get_input_embeddings().num_embeddings  # >= vocab_size (padded vocabularies)
        self.val_nll = MeanMetric()
        self.val_accuracy = MulticlassAccuracy(num_classes=num_rows, average="micro", validate_args=False)

    @property
    def vocab_size(self) -> int:
        """Tokens in the module's tokenizer (domain tokens included)."""
        return len(self.tokenizer)

    @property
    def encoder(self) -> nn.Module:
        """The base model without the MLM head (what ``export_encoder`` saves)."""
        return self.model.base_model

    # ----- data agreement -----
    def check_tokenizer_matches(self, tokenizer: Any, source: str = "datamodule") -> None:
        """Raise ValueError unless ``tokenizer`` has this module's size and domain token ids."""
        hint = (f"give the datamodule the model's tokenizer_name_or_path ({self.tokenizer_name_or_path!r}) "
                f"and domain_tokens ({self.domain_tokens})")
        if len(tokenizer) != self.vocab_size:
            raise ValueError(f"tokenizer: the {source} tokenizer has {len(tokenizer)} tokens, the model's has {self.vocab_size}; {hint}")
        ids = tokenizer.convert_tokens_to_ids(self.domain_tokens)
        if ids != self.domain_token_ids:
            raise ValueError(f"domain_tokens: the {source} tokenizer maps {self.domain_tokens} to {ids}, the model to {self.domain_token_ids}; {hint}")

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is not None:
            self.check_tokenizer_matches(tokenizer)

    # ----- training -----
    def masked_logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(logits ``[N, V]``, targets ``[N]``) at the N positions with a label."""
        labels = batch["labels"]  # [B, T]
        picked = labels != IGNORE_INDEX  # [B, T]
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        head = MLM_HEADS.get(self.model.config.model_type)
        if head is None:
            return self.model(**inputs).logits[picked], labels[picked]
        hidden = self.model.base_model(**inputs).last_hidden_state  # [B, T, H]
        return head(self.model)(hidden[picked]), labels[picked]  # [N, V], [N]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits, targets = self.masked_logits(batch)
        batch_size = batch["input_ids"].shape[0]
        if targets.numel() == 0:  # nothing selected: a zero loss that still touches the head
            return logits.sum() * 0.0
        loss = F.cross_entropy(logits.float(), targets)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/masked_accuracy", (logits.argmax(-1) == targets).float().mean(), batch_size=batch_size)
        return loss

    # ----- evaluation -----
    def on_validation_epoch_start(self) -> None:
        # fresh states in this loop's grad mode (a validate() run leaves inference-mode tensors behind)
        self.val_nll.reset()
        self.val_accuracy.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits, targets = self.masked_logits(batch)
        if targets.numel() == 0:
            return
        self.val_nll.update(F.cross_entropy(logits.float(), targets), weight=targets.numel())
        self.val_accuracy.update(logits.argmax(-1), targets)

    def on_validation_epoch_end(self) -> None:
        if not self.val_nll.update_called:
            return
        nll = self.val_nll.compute()
        self.log("val/loss", nll, sync_dist=False)
        self.log("val/perplexity", torch.exp(nll), sync_dist=False)
        self.log("val/masked_accuracy", self.val_accuracy.compute(), prog_bar=True, sync_dist=False)

    # ----- optimization -----
    def configure_optimizers(self):
        settings = self.optimizer_settings
        return adamw_with_schedule(settings, [(self.named_parameters(), settings.lr)],
                                   int(self.trainer.estimated_stepping_batches), owner="MaskedLMModule")

    # ----- export -----
    def on_fit_end(self) -> None:
        if self.hparams.export_dir and self.trainer.is_global_zero:
            path = self.export_encoder(self.hparams.export_dir)
            log.info("MaskedLMModule: exported the encoder and tokenizer to %s", path)

    def export_encoder(self, folder: str | os.PathLike) -> Path:
        """Save the encoder (no MLM head) + tokenizer to ``folder`` atomically; returns the folder.

        Written into a temporary sibling folder, then renamed into place (an existing folder is moved
        aside first and deleted after). ``HFTextEncoder(model_name_or_path=folder)`` loads the result.
        """
        final = Path(folder).resolve()
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        old = final.parent / f"{tmp.name}-old"
        architectures = getattr(self.encoder.config, "architectures", None)
        try:
            os.chmod(tmp, 0o755)
            self.encoder.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            provenance = {"source": self.hparams.model_name_or_path or "tiny_config", "domain_tokens": self.domain_tokens,
                          "global_step": int(self.trainer.global_step) if self._trainer is not None else 0}
            (tmp / "prismrl_dap.json").write_text(json.dumps(provenance, indent=2))
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
        finally:
            self.encoder.config.architectures = architectures  # save_pretrained rewrote the shared config
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        return final


__all__ = ["MaskedLMModule"]
