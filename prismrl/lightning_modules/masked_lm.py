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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from prismrl.backbones.shipped import check_exactly_one, pretrained_kwargs, resolve_model_path, tiny_hf_config
from prismrl.backbones.text import DEFAULT_TINY_TOKENIZER, HFTextEncoder
from prismrl.data.domain_corpus import load_domain_tokenizer, validate_domain_tokens
from prismrl.data.loaders import load_pending_dataloader_states
from prismrl.optim import decay_groups, warmup_cosine_scheduler

log = logging.getLogger(__name__)
IGNORE_INDEX = -100

# hidden [N, H] -> logits [N, V] for families whose head can run on selected positions only; any other
# AutoModelForMaskedLM family computes logits at every position and then selects.
MLM_HEADS: dict[str, Callable[[nn.Module], Callable[[Tensor], Tensor]]] = {
    "bert": lambda model: model.cls,  # BERT, MiniLM
    "roberta": lambda model: model.lm_head,
    "xlm-roberta": lambda model: model.lm_head,
    "modernbert": lambda model: (lambda hidden: model.decoder(model.head(hidden))),
}


def build_masked_lm(model_name_or_path: str | None, tiny_config: dict | None, tokenizer: Any, attn_implementation: str = "sdpa"):
    """An ``AutoModelForMaskedLM`` from a name/path (pretrained) or a tiny config (random init).

    A tiny config takes ``vocab_size = len(tokenizer)`` and the tokenizer's pad/cls/sep (bos/eos) ids unless it
    sets them.
    """
    from transformers import AutoConfig, MODEL_FOR_MASKED_LM_MAPPING

    check_exactly_one(model_name_or_path, tiny_config)
    if tiny_config is not None:
        config = tiny_hf_config(tiny_config)
        config.vocab_size = tiny_config.get("vocab_size", len(tokenizer))
        special = {"pad_token_id": tokenizer.pad_token_id, "cls_token_id": tokenizer.cls_token_id,
                   "sep_token_id": tokenizer.sep_token_id, "bos_token_id": tokenizer.bos_token_id or tokenizer.cls_token_id,
                   "eos_token_id": tokenizer.eos_token_id or tokenizer.sep_token_id}
        for key, value in special.items():
            if key not in tiny_config and (key == "pad_token_id" or hasattr(config, key)):
                setattr(config, key, value)
    else:
        path = resolve_model_path(model_name_or_path)
        config = AutoConfig.from_pretrained(path, **pretrained_kwargs(path))
    if type(config) not in MODEL_FOR_MASKED_LM_MAPPING:
        raise ValueError(f"model_type: transformers has no masked-LM model for {config.model_type!r}")
    model_cls = MODEL_FOR_MASKED_LM_MAPPING[type(config)]
    if attn_implementation == "sdpa" and not getattr(model_cls, "_supports_sdpa", False):
        attn_implementation = "eager"
    if tiny_config is not None:
        return model_cls._from_config(config, attn_implementation=attn_implementation)
    model, info = model_cls.from_pretrained(
        path, attn_implementation=attn_implementation, output_loading_info=True, **pretrained_kwargs(path)
    )
    model.train()  # from_pretrained returns eval mode; Lightning keeps per-module modes, so dropout would stay off
    missing = sorted(info.get("missing_keys", []))
    if missing:
        log.warning("MaskedLMModule: %s has no weights for %s; they are newly initialized (e.g. a missing MLM head)",
                    model_name_or_path, ", ".join(missing))
    return model


def init_domain_embeddings(model: nn.Module, tokenizer: Any, domain_tokens: list[str]) -> list[int]:
    """Grow the embeddings to ``len(tokenizer)`` rows if needed; domain rows := mean of the base rows.

    The domain tokens are the last ``k`` ids of the tokenizer; base rows are ids ``< len(tokenizer) - k``.
    Returns the domain token ids.
    """
    size = len(tokenizer)
    if model.get_input_embeddings().num_embeddings < size:
        model.resize_token_embeddings(size, mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(domain_tokens)
    base = size - len(domain_tokens)
    if ids != list(range(base, size)):
        raise ValueError(f"domain_tokens: expected ids {list(range(base, size))} at the end of the vocabulary, received {ids}")
    if not ids:
        return ids
    output = model.get_output_embeddings()
    with torch.no_grad():
        matrices = [model.get_input_embeddings().weight]
        if output is not None and output.weight is not matrices[0]:
            matrices.append(output.weight)
        for weight in matrices:
            weight[ids] = weight[:base].mean(dim=0)  # [k, H] <- [H]
        bias = getattr(output, "bias", None) if output is not None else None
        if isinstance(bias, Tensor) and bias.shape[0] >= size:
            bias[ids] = bias[:base].mean()
    return ids


class MaskedLMModule(LightningModule):
    """Continued masked-LM pre-training of a BERT/MiniLM, RoBERTa or ModernBERT encoder on domain text.

    Args:
        model_name_or_path / tiny_config: exactly one; an HF id, folder or "shipped:<alias>" (a model saved
            without an MLM head, like the shipped MiniLM, gets a newly initialized head: a log line says so),
            or a transformers config dict with "model_type" (random init).
        tokenizer_name_or_path: default ``model_name_or_path``, else the shipped MiniLM tokenizer.
        domain_tokens: new special tokens, e.g. ["<DOMAIN_NEWS>"]; one already in the vocabulary -> ValueError.
        lr, weight_decay, betas, warmup_ratio, min_lr_ratio: AdamW with linear warmup then cosine decay.
        export_dir: when set, ``export_encoder(export_dir)`` runs at the end of ``fit`` (final weights).
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        tiny_config: dict | None = None,
        tokenizer_name_or_path: str | None = None,
        domain_tokens: list[str] | None = None,
        lr: float = 5e-5,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_ratio: float = 0.06,
        min_lr_ratio: float = 0.0,
        attn_implementation: str = "sdpa",
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
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

    def on_train_start(self) -> None:
        load_pending_dataloader_states(self.trainer)  # exact mid-epoch resume

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
        hp = self.hparams
        groups = decay_groups(self.named_parameters(), hp.weight_decay, hp.lr)
        if not groups:
            raise ValueError("MaskedLMModule: no trainable parameters")
        optimizer = torch.optim.AdamW(groups, betas=tuple(hp.betas))
        scheduler = warmup_cosine_scheduler(optimizer, int(self.trainer.estimated_stepping_batches), hp.warmup_ratio, hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

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


def load_dap_encoder_into(text_encoder: HFTextEncoder, folder: str | os.PathLike) -> HFTextEncoder:
    """Copy an exported DAP encoder's weights and tokenizer into ``text_encoder`` (in place; returned).

    Raises ValueError when the model type, vocabulary size (embedding rows) or hidden width differ,
    naming both values; TypeError when ``text_encoder`` carries LoRA adapters (build it with
    ``HFTextEncoder(model_name_or_path=folder, lora=...)`` instead).
    """
    from transformers import AutoConfig

    if not isinstance(text_encoder, HFTextEncoder):
        raise TypeError(f"text_encoder: expected an HFTextEncoder, received {type(text_encoder).__name__}")
    if hasattr(text_encoder.model, "peft_config"):
        raise TypeError("text_encoder: carries LoRA adapters; build it with HFTextEncoder(model_name_or_path=folder, lora=...)")
    folder = str(folder)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    target = text_encoder.model
    rows = target.get_input_embeddings().num_embeddings
    checks = [("model_type", config.model_type, target.config.model_type), ("vocab_size", config.vocab_size, rows),
              ("hidden_size", config.hidden_size, text_encoder.hidden_size)]
    for field, exported, current in checks:
        if exported != current:
            raise ValueError(f"{field}: the DAP encoder in {folder} has {exported!r}, the text encoder has {current!r}")
    source = HFTextEncoder(model_name_or_path=folder, max_length=text_encoder.max_length)
    target.load_state_dict(source.model.state_dict(), strict=True)
    text_encoder.tokenizer = source.tokenizer
    return text_encoder


__all__ = ["MLM_HEADS", "MaskedLMModule", "build_masked_lm", "init_domain_embeddings", "load_dap_encoder_into"]
