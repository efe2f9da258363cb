"""``PRMModule``: a process reward model as a LightningModule -- wiring only.

The maths lives elsewhere: the backbone in :mod:`spare_train.backbone`, the heads and the loss in
:mod:`spare_train.heads`, the metrics in :mod:`spare_train.metrics`. Precision, gradient
accumulation, clipping and the distribution strategy are Trainer settings (see ``recipes/prm/``).

The model is built in :meth:`PRMModule.configure_model`, so a sharding strategy (FSDP) can wrap
it as it is created. With LoRA, checkpoints hold only the trainable tensors (adapters, new token
rows, the classifier) plus optimizer state; the frozen weights come back from ``name_or_path``.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from spare_train.backbone import BackboneConfig, LoraSettings, load_backbone, trainable_names
from spare_train.heads import build_head, label_token_ids, soft_cross_entropy, step_logits, step_scores
from spare_train.tokenize import FormatConfig, load_tokenizer, prepare_tokenizer

_FORMAT_KEYS = [f.name for f in fields(FormatConfig)]


def rng_states() -> dict[str, Any]:
    """torch's CPU (and, when present, CUDA) generator states, as tensors (``weights_only``-safe)."""
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def backbone_config(value: BackboneConfig | dict | None) -> BackboneConfig:
    """Accept a config, its ``asdict`` form (as stored in checkpoints) or ``None`` (defaults)."""
    if value is None:
        return BackboneConfig()
    if isinstance(value, BackboneConfig):
        return value
    d = dict(value)
    if isinstance(d.get("lora"), dict):
        d["lora"] = LoraSettings(**d["lora"])
    return BackboneConfig(**d)


class PRMModule(L.LightningModule):
    """Train a PRM: one score per step, read at the step-tag token.

    Args:
        backbone: the causal LM and how to load it (dtype, LoRA, quantisation).
        head: ``lm_tokens`` scores P(``label_tokens[1]``) among the two label tokens at the tag
            (Math-Shepherd / SPARE-PRM); ``classifier`` adds a new 2-way head.
        classifier_type: ``linear`` (``H -> 2``) or ``mlp`` (``H -> H -> 2``, Qwen2.5-Math-PRM).
        label_tokens: (incorrect, correct) tokens for ``lm_tokens``; each one existing token.
        tokenizer: tokenizer name or path; ``None`` takes the DataModule's ``tokenizer``, else
            the backbone's ``name_or_path``.
        step_tag: the tag string; ``None`` takes the DataModule's, else ``" ки"``.
        class_weights: loss weights of (incorrect, correct) targets.
        last_step_only: train on each solution's last step only (an outcome-style baseline).
        first_error_steps: for this many optimizer steps, steps after each solution's first
            error are left out of the loss (a curriculum: a small model first learns to spot a
            wrong step from the step itself, which the later, propagated INCORRECT labels would
            otherwise drown); after them every labeled step counts. Validation always uses all.
        optimizer: ``adamw`` (torch) or bitsandbytes ``adamw_8bit`` / ``paged_adamw_8bit``.
        lr: peak learning rate.
        weight_decay: decoupled weight decay on matrices (not on biases, norms or 1-d tensors).
        betas: Adam betas.
        scheduler: learning-rate shape after warmup (transformers' ``get_*_schedule_with_warmup``).
        warmup_ratio: fraction of the total optimizer steps spent warming up linearly.
    """

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        head: Literal["lm_tokens", "classifier"] = "lm_tokens",
        classifier_type: Literal["linear", "mlp"] = "linear",
        label_tokens: tuple[str, str] = ("-", "+"),
        tokenizer: str | None = None,
        step_tag: str | None = None,
        class_weights: tuple[float, float] | None = None,
        last_step_only: bool = False,
        first_error_steps: int = 0,
        optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        scheduler: Literal["cosine", "linear", "constant"] = "cosine",
        warmup_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone_cfg = backbone_config(backbone)
        # plain dicts/tuples only, so checkpoints load with torch.load(weights_only=True)
        self.hparams["backbone"] = asdict(self.backbone_cfg)
        self.hparams["label_tokens"] = list(label_tokens)
        self.strict_loading = self.backbone_cfg.lora is None
        self.model: Any = None
        self.head: torch.nn.Module | None = None
        self.format_config = FormatConfig(step_tag=step_tag or FormatConfig.step_tag)
        self.tokenizer_name = tokenizer or self.backbone_cfg.name_or_path
        self._tokenizer: Any = None
        from spare_train.metrics import PRMEvaluator

        self.val_metrics = PRMEvaluator()
        self.test_metrics = PRMEvaluator()

    # ---- model --------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self._adopt_datamodule_format(getattr(self._trainer, "datamodule", None))

    def _adopt_datamodule_format(self, dm: Any) -> None:
        """Score with the format the data was tokenised with (recorded for export and scoring)."""
        if dm is None:
            return
        hp = dict(getattr(dm, "hparams", {}) or {})
        fmt = getattr(dm, "format_config", None)
        values = asdict(fmt) if isinstance(fmt, FormatConfig) else {k: hp[k] for k in _FORMAT_KEYS if k in hp}
        if self.hparams.step_tag and values.get("step_tag", self.hparams.step_tag) != self.hparams.step_tag:
            raise ValueError(f"model step_tag {self.hparams.step_tag!r} != data step_tag {values['step_tag']!r}")
        self.format_config = FormatConfig(**{**asdict(self.format_config), **values})
        name = hp.get("tokenizer")
        if self.hparams.tokenizer is None and isinstance(name, str):
            self.tokenizer_name = name
            tok = getattr(dm, "tokenizer", None)  # already prepared with the same tag
            self._tokenizer = tok if tok is not None and not isinstance(tok, str) else None
        # record what was adopted, so logged/saved hparams say it (and agree with the data's)
        for key, value in (("tokenizer", name), ("step_tag", values.get("step_tag"))):
            if self.hparams.get(key) is None and isinstance(value, str):
                self.hparams[key] = value
                self._hparams_initial[key] = value

    @property
    def tokenizer(self) -> Any:
        """The tokenizer, with the step tag added as one token when it was not."""
        if self._tokenizer is None:
            tok = load_tokenizer(self.tokenizer_name)
            prepare_tokenizer(tok, self.format_config)
            self._tokenizer = tok
        return self._tokenizer

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModel

        tok, hp = self.tokenizer, self.hparams
        if hp.head == "lm_tokens":
            self.model = load_backbone(self.backbone_cfg, len(tok))
            self.head = build_head("lm_tokens", label_ids=label_token_ids(tok, tuple(hp.label_tokens)))
        else:
            self.model = load_backbone(self.backbone_cfg, len(tok), auto_class=AutoModel)
            config = self.model.config
            self.head = build_head(
                "classifier",
                hidden_size=config.hidden_size,
                classifier_type=hp.classifier_type,
                init_std=getattr(config, "initializer_range", 0.02),
            )
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps modules' modes

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-step logits ``[B, S, 2]`` (incorrect, correct)."""
        return step_logits(self.model, self.head, batch)

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
        curriculum = self.global_step < self.hparams.get("first_error_steps", 0)
        loss = self.loss(self(batch), batch, first_error_only=curriculum)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _eval_step(self, batch: dict[str, Any], prefix: str, metrics: Any) -> None:
        logits = self(batch)
        self.log(f"{prefix}/loss", self.loss(logits, batch), sync_dist=True, batch_size=batch["input_ids"].shape[0])
        metrics.update(
            step_scores(logits), batch["step_labels"], batch["step_mask"], batch["outcome"],
            batch["group_ids"], batch["answers"],
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

    # ---- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if p.ndim >= 2], "weight_decay": hp.weight_decay},
            {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        kwargs = {"lr": hp.lr, "betas": tuple(hp.betas)}
        if hp.optimizer == "adamw":
            opt = torch.optim.AdamW(groups, **kwargs)
        else:
            import bitsandbytes as bnb

            cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[hp.optimizer]
            opt = cls(groups, **kwargs)
        import transformers

        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp.warmup_ratio * total)
        if hp.scheduler == "cosine":
            sched = transformers.get_cosine_schedule_with_warmup(opt, warmup, total)
        elif hp.scheduler == "linear":
            sched = transformers.get_linear_schedule_with_warmup(opt, warmup, total)
        else:
            sched = transformers.get_constant_schedule_with_warmup(opt, warmup)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["spare_prm"] = {"format": asdict(self.format_config), "tokenizer": self.tokenizer_name}
        # Lightning does not save RNG states; without them dropout (LoRA's included) draws other
        # masks after a resume and the run diverges from an uninterrupted one
        checkpoint["rng_states"] = rng_states()
        if self.backbone_cfg.lora is not None:
            keep = trainable_names(self)
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
        info = checkpoint.get("spare_prm")
        if info:
            self.format_config = FormatConfig(**info["format"])
            self.tokenizer_name = info["tokenizer"]
        if self.model is not None:
            unknown = set(checkpoint["state_dict"]) - set(self.state_dict())
            if unknown:
                raise KeyError(f"checkpoint tensors this model does not have: {sorted(unknown)[:5]}…")
