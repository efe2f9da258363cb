"""``PRMModule``: a process reward model as a LightningModule -- wiring only.

The maths lives elsewhere: the backbone in :mod:`spare_train.models.backbone`, the heads in
:mod:`spare_train.prm.heads`, the loss in :mod:`spare_train.prm.loss`, the metrics in
:mod:`spare_train.prm.metrics`, the optimiser in :mod:`spare_train.models.optim` and what a
checkpoint holds in :mod:`spare_train.models.checkpoint`. Precision, gradient accumulation,
clipping and the distribution strategy are Trainer settings (see ``recipes/prm/``).

The model is built in :meth:`PRMModule.configure_model`, so a sharding strategy can wrap it as it
is created: under FSDP2 (:class:`spare_train.models.parallel.FSDP2Strategy`) each decoder layer is
sharded and the whole scoring forward (body, tag gather, head) runs inside one root module
(:class:`spare_train.prm.heads.StepScorer`), so both heads read whole weights, never shards. ``tokenizer`` and ``prompt_format`` come from the DataModule (``spare-train fit`` links
them), so they are written once, under ``data``, and saved with the checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from spare_train.models.backbone import BackboneConfig, backbone_config, load_backbone
from spare_train.models.checkpoint import TrainingStateCheckpoint
from spare_train.models.finite import NonFiniteGuard, NonFiniteLoss, NonFiniteMode
from spare_train.models.optim import OptimConfig, configure_optimizers
from spare_train.models.parallel import shard_for_strategy
from spare_train.models.preemption import SaveOnSigterm
from spare_train.prm.heads import StepScorer, get_head, step_scores
from spare_train.prm.loss import soft_cross_entropy
from spare_train.tokenize import FormatConfig, format_config, load_tokenizer, prepare_tokenizer


class PRMModule(L.LightningModule):
    """Train a PRM: one score per step, read at the step-tag token.

    Args:
        backbone: the causal LM and how to load it (dtype, LoRA, quantisation).
        head: ``lm_tokens`` scores P(``label_tokens[1]``) among the two label tokens at the tag
            (Math-Shepherd / SPARE-PRM); ``classifier`` adds a new 2-way head.
        classifier_type: ``linear`` (``H -> 2``) or ``mlp`` (``H -> H -> 2``, Qwen2.5-Math-PRM).
        label_tokens: (incorrect, correct) tokens for ``lm_tokens``; each one existing token.
        tokenizer: tokenizer name or path (``spare-train fit`` links the DataModule's); ``None``
            takes the backbone's ``name_or_path``.
        prompt_format: how records become model input (linked from the DataModule: template,
            step tag, separator, max length).
        class_weights: loss weights of (incorrect, correct) targets.
        last_step_only: train on each solution's last step only (an outcome-style baseline).
        first_error_steps: for this many optimizer steps, steps after each solution's first
            error are left out of the loss (a curriculum: a small model first learns to spot a
            wrong step from the step itself, which the later, propagated INCORRECT labels would
            otherwise drown); after them every labeled step counts. Validation always uses all.
        optimizer: ``adamw`` (torch, fused kernel when available) or bitsandbytes
            ``adamw_8bit`` / ``paged_adamw_8bit``.
        lr: peak learning rate.
        weight_decay: decoupled weight decay on matrices (not on biases, norms or 1-d tensors).
        betas: Adam betas.
        scheduler: learning-rate shape after warmup (transformers' ``get_*_schedule_with_warmup``).
        warmup_ratio: fraction of the total optimizer steps spent warming up linearly.
        nonfinite_loss: on a NaN/inf training loss, ``raise`` (stop, naming the step and the
            batch's record ids) or ``skip`` the optimizer step and count it
            (:mod:`spare_train.models.finite`); not saved with the checkpoint, so a resume decides.
        include_references: count reference solutions (``is_reference``, e.g. GSM8K's gold answer)
            in the validation / test metrics; off, as in ``spare-train evaluate``: they are not
            candidates, and would make the best-of-N oracle 100 %.
    """

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        head: Literal["lm_tokens", "classifier"] = "lm_tokens",
        classifier_type: Literal["linear", "mlp"] = "linear",
        label_tokens: tuple[str, str] = ("-", "+"),
        tokenizer: str | None = None,
        prompt_format: FormatConfig | None = None,
        class_weights: tuple[float, float] | None = None,
        last_step_only: bool = False,
        first_error_steps: int = 0,
        optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        scheduler: Literal["cosine", "linear", "constant"] = "cosine",
        warmup_ratio: float = 0.0,
        nonfinite_loss: NonFiniteMode = "raise",
        include_references: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["nonfinite_loss"])
        self.nonfinite_loss = nonfinite_loss
        self.backbone_cfg = backbone_config(backbone)
        self.format_config = format_config(prompt_format)
        get_head(head)  # fail at construction on a head name that does not exist
        # plain dicts/tuples only, so checkpoints load with torch.load(weights_only=True)
        self.hparams["backbone"] = asdict(self.backbone_cfg)
        self.hparams["prompt_format"] = asdict(self.format_config)
        self.hparams["label_tokens"] = list(label_tokens)
        self.tokenizer_name = tokenizer or self.backbone_cfg.name_or_path
        self.hparams["tokenizer"] = self.tokenizer_name
        self.save_trainable_only = self.backbone_cfg.lora is not None  # see models/checkpoint.py
        self.strict_loading = not self.save_trainable_only
        self.optim = OptimConfig(optimizer, lr, weight_decay, tuple(betas), scheduler, warmup_ratio)
        self.model: Any = None
        self.head: torch.nn.Module | None = None
        self._tokenizer: Any = None
        from spare_train.prm.evaluator import PRMEvaluator

        self.val_metrics = PRMEvaluator()
        self.test_metrics = PRMEvaluator()

    # ---- model --------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The tokenizer, with the step tag added as one token when it was not."""
        if self._tokenizer is None:
            tok = load_tokenizer(self.tokenizer_name, self.backbone_cfg.extra.get("trust_remote_code", False))
            prepare_tokenizer(tok, self.format_config)
            self._tokenizer = tok
        return self._tokenizer

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModel

        hp, head_cls = self.hparams, get_head(self.hparams.head)
        auto_class = AutoModel if head_cls.body == "body" else None
        self.model = load_backbone(self.backbone_cfg, len(self.tokenizer), auto_class=auto_class)
        self.head = head_cls.create(
            self.model, self.tokenizer, label_tokens=tuple(hp.label_tokens), classifier_type=hp.classifier_type
        )
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps modules' modes
        shard_for_strategy(self, self.model, root=self.scorer)

    @property
    def scorer(self) -> StepScorer:
        """The forward's root module over ``model`` and ``head``; kept out of the module tree (so
        state_dict keys stay ``model.*`` / ``head.*``) and rebuilt if either was replaced."""
        scorer = self.__dict__.get("_scorer")
        if scorer is None or scorer.model is not self.model or scorer.head is not self.head:
            scorer = StepScorer(self.model, self.head)
            object.__setattr__(self, "_scorer", scorer)
        return scorer

    def configure_callbacks(self) -> list[Any]:
        return [TrainingStateCheckpoint(), NonFiniteLoss(self.nonfinite_loss), NonFiniteGuard(), SaveOnSigterm()]

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-step logits ``[B, S, 2]`` (incorrect, correct)."""
        return self.scorer({k: batch[k] for k in StepScorer.INPUTS if k in batch})

    def loss(self, logits: Tensor, batch: dict[str, Tensor], first_error_only: bool = False) -> Tensor:
        hp = self.hparams
        return soft_cross_entropy(
            logits,
            batch["step_labels"],
            class_weights=tuple(hp.class_weights) if hp.class_weights else None,
            last_step_only=hp.last_step_only,
            step_mask=batch.get("step_mask"),
            first_error_only=first_error_only,
        )

    # ---- loops --------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        curriculum = self.global_step < self.hparams.first_error_steps
        loss = self.loss(self(batch), batch, first_error_only=curriculum)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["step_labels"].shape[0])
        return loss

    def _eval_step(self, batch: dict[str, Any], prefix: str, metrics: Any) -> None:
        logits = self(batch)
        n = batch["step_labels"].shape[0]
        self.log(f"{prefix}/loss", self.loss(logits, batch), sync_dist=True, batch_size=n)
        keep = torch.ones(n, dtype=torch.bool, device=logits.device)
        if not self.hparams.get("include_references", False) and "is_reference" in batch:
            keep = ~batch["is_reference"].to(logits.device)
        rows = keep.nonzero().flatten().tolist()
        metrics.update(
            step_scores(logits)[keep], batch["step_labels"][keep], batch["step_mask"][keep], batch["outcome"][keep],
            [batch["group_ids"][i] for i in rows], [batch["answers"][i] for i in rows],
        )  # fmt: skip

    def _eval_epoch_end(self, prefix: str, metrics: Any) -> None:
        values = {f"{prefix}/{k}": float(v) for k, v in metrics.compute().items()}
        self.log_dict(values, sync_dist=True)
        metrics.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_metrics)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        scores = step_scores(self(batch)).float().cpu()
        mask = batch["step_mask"].cpu()
        return [{"id": i, "step_scores": s[m].tolist()} for i, s, m in zip(batch["ids"], scores, mask)]

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimizers(self, self.optim)
