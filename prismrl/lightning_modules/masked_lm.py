"""Domain-adaptive pre-training (DAP): continued masked-LM training of a text encoder, with domain tokens.

One training step (labels = the original id at the ~15% selected positions, -100 elsewhere):
    hidden = encoder(input_ids, attention_mask)       # [B, T, H]
    picked = labels != -100                           # [B, T]
    logits = mlm_head(hidden[picked])                 # [N, V]: the head runs on the N selected positions only
    loss   = mean_n CE(logits_n, labels_n)
Under DDP / FSDP2 the loss is the mean over the selected positions of every rank (counts all-reduced; each rank
returns sum_n CE * world_size / N_global, which the ranks' gradient averaging turns into the global mean's gradient),
so a 2-process run takes the same steps as one process on the doubled batch. Under FSDP2 (``configure_model``) the
encoder + head computation is registered as a forward method of the sharded root (``picked_mlm_logits``): FSDP2
gathers the root's weights (embeddings, tied head) only around a root forward.
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
import torch.distributed as dist
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
from prismrl.backbones.sharding import full_state_dict, is_sharded
from prismrl.backbones.shipped import check_exactly_one
from prismrl.backbones.text import DEFAULT_TINY_TOKENIZER
from prismrl.lightning_modules.plumbing import StageModule
from prismrl.optim import OptimizerSettings, adamw_with_schedule

log = logging.getLogger(__name__)


def picked_mlm_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, picked: Tensor) -> Tensor:
    """MLM logits ``[N, V]`` of ``model`` (a masked LM with an ``MLM_HEADS`` entry) at the N ``picked`` positions:
    the encoder, then the head on those positions only."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
    return MLM_HEADS[model.config.model_type](model)(hidden[picked])  # [N, V]


class MaskedLMModule(StageModule):
    """Continued masked-LM pre-training of a BERT/MiniLM, RoBERTa or ModernBERT encoder on domain text.

    Args:
        model_name_or_path: an HF id, folder or "shipped:<alias>" (a model saved without an MLM head, like the
            shipped MiniLM, gets a newly initialized head: a log line says so); exactly one of this or tiny_config.
        tiny_config: a transformers config dict with "model_type" (random init), instead of model_name_or_path.
        tokenizer_name_or_path: default ``model_name_or_path``, else the shipped MiniLM tokenizer.
        domain_tokens: new special tokens, e.g. ["<DOMAIN_NEWS>"]; one already in the vocabulary -> ValueError.
        optimizer: AdamW over every trainable parameter at ``lr`` (``encoder_lr`` unused), linear warmup then
            cosine decay.
        export_dir: when set, ``export_encoder(export_dir)`` runs at the end of ``fit`` (final weights).
        attn_implementation: "sdpa" (PyTorch fused attention), "eager" or "flash_attention_2".
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
        if self.model.config.model_type not in MLM_HEADS:
            return self.model(**inputs).logits[picked], labels[picked]
        sharded_forward = self.model.__dict__.get("picked_mlm_logits")  # set by configure_model under FSDP2
        if sharded_forward is not None:
            return sharded_forward(picked=picked, **inputs), labels[picked]
        return picked_mlm_logits(self.model, picked=picked, **inputs), labels[picked]  # [N, V], [N]

    def configure_model(self) -> None:
        """FSDP2 sharding (``StageModule.configure_model``), then ``picked_mlm_logits`` registered as a forward
        method of the sharded masked LM, so its root weights are gathered for the encoder and the head."""
        super().configure_model()
        if is_sharded(self.model) and self.model.config.model_type in MLM_HEADS and \
                "picked_mlm_logits" not in self.model.__dict__:
            from torch.distributed.fsdp import register_fsdp_forward_method

            self.model.picked_mlm_logits = picked_mlm_logits.__get__(self.model)
            register_fsdp_forward_method(self.model, "picked_mlm_logits")

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits, targets = self.masked_logits(batch)
        batch_size = batch["input_ids"].shape[0]
        nll = F.cross_entropy(logits.float(), targets, reduction="sum")  # 0, still touching the head, when N = 0
        sums = torch.stack([nll.detach(), (logits.argmax(-1) == targets).sum().float(),
                            torch.tensor(float(targets.numel()), device=nll.device)])
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)  # [sum CE, correct, selected] over every rank
        selected = sums[2].clamp(min=1.0)
        if sums[2] > 0:
            self.log("train/loss", sums[0] / selected, prog_bar=True, batch_size=batch_size)
            self.log("train/masked_accuracy", sums[1] / selected, batch_size=batch_size)
        return nll * world / selected  # gradients averaged over ranks: the global token mean's gradient

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
        if not self.hparams.export_dir:
            return
        state = None
        if is_sharded(self.model):  # every rank takes part in gathering the full weights; rank 0 receives them
            prefix = f"{self.model.base_model_prefix}."
            state = {k[len(prefix):]: v for k, v in full_state_dict(self.model).items() if k.startswith(prefix)}
        if self.trainer.is_global_zero:
            path = self.export_encoder(self.hparams.export_dir, state_dict=state)
            log.info("MaskedLMModule: exported the encoder and tokenizer to %s", path)

    def export_encoder(self, folder: str | os.PathLike, state_dict: dict[str, Tensor] | None = None) -> Path:
        """Save the encoder (no MLM head) + tokenizer to ``folder`` atomically; returns the folder.
        ``state_dict``: the encoder's full weights when the module is sharded (default: its own state dict).

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
            self.encoder.save_pretrained(tmp, state_dict=state_dict)
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
