"""``PolicyModule``: train a causal-LM policy offline with one objective component -- wiring only.

The objective (:mod:`spare_train.policy.objectives`) says which data view it takes and whether it
needs a reference model; the maths is in :mod:`spare_train.policy.losses`; optimiser, schedule
and checkpoint contents are shared with the PRM (:mod:`spare_train.models`).

Reference (``reference``): ``adapter`` runs the same network with its LoRA adapters disabled (no
second copy); ``copy`` keeps a frozen copy made before training (a registered submodule, so a
strategy places and shards it, but left out of checkpoints); ``precomputed`` runs the reference
once over the data at the start of ``fit`` (:class:`spare_train.policy.reference.ReferenceLogps`),
so training holds one model and does one forward per step; ``auto`` picks ``adapter`` under LoRA
and ``copy`` otherwise (``none`` when the objective needs no reference).

Under FSDP2 (:class:`spare_train.models.parallel.FSDP2Strategy`) the policy is sharded per decoder
layer, and so is the ``copy`` reference (frozen, gathered layer by layer in its no-grad forward);
the ``adapter`` reference is the sharded policy itself.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any, Literal

import lightning as L
import torch

from spare_train.models.backbone import BackboneConfig, backbone_config, load_backbone
from spare_train.models.checkpoint import TrainingStateCheckpoint
from spare_train.models.finite import NonFiniteGuard, NonFiniteLoss, NonFiniteMode
from spare_train.models.optim import OptimConfig, configure_optimizers
from spare_train.models.parallel import shard_for_strategy
from spare_train.models.preemption import SaveOnSigterm
from spare_train.policy import losses as F_
from spare_train.policy.objectives import Inputs, Objective, build_objective
from spare_train.tokenize import FormatConfig, format_config, load_tokenizer

Reference = Literal["auto", "adapter", "copy", "precomputed", "none"]


class PolicyModule(L.LightningModule):
    """A causal-LM policy trained offline with ``objective``.

    Args:
        backbone: the policy model (path, dtype, LoRA, quantisation).
        objective: the loss component (e.g. ``{class_path: spare_train.policy.objectives.DPO,
            init_args: {beta: 0.1}}``) or its name with default settings (``dpo``); see
            :mod:`spare_train.policy.objectives`.
        reference: ``auto``, ``adapter``, ``copy``, ``precomputed`` or ``none``.
        tokenizer: tokenizer name or path (``spare-train fit`` links the DataModule's); ``None``
            takes the backbone's ``name_or_path``.
        prompt_format: how prompts were rendered (linked from the DataModule; the export's model
            card shows the same prompt).
        optimizer: ``adamw`` (torch, fused kernel when available) or bitsandbytes 8-bit AdamW.
        lr: peak learning rate.
        weight_decay: decoupled weight decay on matrices.
        betas: Adam betas.
        scheduler: learning-rate shape after warmup.
        warmup_ratio: fraction of steps with linear warm-up.
        logprob_chunk_rows: rows per chunk when turning logits into token log-probs.
        disable_dropout: set every dropout to 0 (policy and reference then see the same network).
        nonfinite_loss: on a NaN/inf training loss, ``raise`` (stop, naming the step and the
            batch's record ids) or ``skip`` the optimizer step and count it
            (:mod:`spare_train.models.finite`); not saved with the checkpoint, so a resume decides.
    """

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        objective: Objective | str = "dpo",
        reference: Reference = "auto",
        tokenizer: str | None = None,
        prompt_format: FormatConfig | None = None,
        optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw",
        lr: float = 5e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        scheduler: Literal["cosine", "linear", "constant"] = "linear",
        warmup_ratio: float = 0.0,
        logprob_chunk_rows: int = 1,
        disable_dropout: bool = True,
        nonfinite_loss: NonFiniteMode = "raise",
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["objective", "nonfinite_loss"])
        self.nonfinite_loss = nonfinite_loss
        self.backbone_cfg = backbone_config(backbone)
        self.objective = build_objective(objective)
        self.format_config = format_config(prompt_format)
        self.tokenizer_name = tokenizer or self.backbone_cfg.name_or_path
        # plain values only, so that ``torch.load(weights_only=True)`` reads checkpoints back
        self.hparams["backbone"] = asdict(self.backbone_cfg)
        self.hparams["objective"] = self.objective.spec()
        self.hparams["prompt_format"] = asdict(self.format_config)
        self.hparams["tokenizer"] = self.tokenizer_name
        self.save_trainable_only = self.backbone_cfg.lora is not None  # see models/checkpoint.py
        self.strict_loading = not self.save_trainable_only
        self.optim = OptimConfig(optimizer, lr, weight_decay, tuple(betas), scheduler, warmup_ratio)
        self.policy: torch.nn.Module | None = None
        self.reference_model: torch.nn.Module | None = None
        self.reference_mode = reference
        self._reference_cache: Any = None  # the ReferenceLogps callback, kept across fit/validate calls

    @classmethod
    def from_model(cls, model: torch.nn.Module, **kwargs: Any) -> PolicyModule:
        """Wrap an already loaded policy (tests, demos, notebooks)."""
        module = cls(**kwargs)
        module.policy = model
        module.configure_model()
        return module

    # ------------------------------------------------------------------ setup
    def configure_model(self) -> None:
        if self.policy is None:
            trust = self.backbone_cfg.extra.get("trust_remote_code", False)
            self.policy = load_backbone(self.backbone_cfg, len(load_tokenizer(self.tokenizer_name, trust)))
        if self.hparams.disable_dropout:
            for m in self.policy.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0
        if self.reference_mode == "auto":
            from peft import PeftModel

            if not self.objective.needs_reference:
                self.reference_mode = "none"
            else:
                self.reference_mode = "adapter" if isinstance(self.policy, PeftModel) else "copy"
        if self.reference_mode == "copy" and self.reference_model is None:
            self.reference_model = copy.deepcopy(self.policy).eval().requires_grad_(False)
        shard_for_strategy(self, self.policy)
        shard_for_strategy(self, self.reference_model)

    def configure_callbacks(self) -> list[Any]:
        callbacks: list[Any] = [TrainingStateCheckpoint(), NonFiniteLoss(self.nonfinite_loss), NonFiniteGuard(), SaveOnSigterm()]
        if self.reference_mode == "precomputed":
            from spare_train.policy.reference import ReferenceLogps

            self._reference_cache = self._reference_cache or ReferenceLogps()
            callbacks.append(self._reference_cache)
        return callbacks

    def setup(self, stage: str) -> None:
        if self.objective.needs_reference and self.reference_mode == "none":
            raise ValueError(f"objective {self.objective.name!r} needs a reference model; reference='none'")
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        view = getattr(getattr(dm, "hparams", None), "view", None)
        if view is not None and view != self.objective.view and not (view == "pairs" and self.objective.view == "filtered"):
            raise ValueError(f"objective {self.objective.name!r} trains on the {self.objective.view!r} view; "
                             f"the data module builds {view!r}: set data.init_args.view: {self.objective.view}")  # fmt: skip

    def on_fit_start(self) -> None:
        # from_pretrained returns eval-mode modules and Lightning keeps modes as it finds them;
        # gradient checkpointing only runs in train mode
        self.policy.train()

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The policy's tensors; the frozen ``copy`` reference is rebuilt, never saved."""
        state = super().state_dict(*args, **kwargs)
        return {k: v for k, v in state.items() if not k.startswith("reference_model.")}

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load the policy's tensors; the ``copy`` reference keeps the weights it was built with."""
        if self.reference_model is not None:
            own = {f"reference_model.{k}": v for k, v in self.reference_model.state_dict().items()}
            state_dict = {**state_dict, **own}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------ log-probs
    def token_logps(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        model: torch.nn.Module | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[R, L]`` log-probs of each token under ``model`` (default: the policy).

        With ``loss_mask`` only positions from the first masked one on get logits
        (``logits_to_keep``) and earlier positions are 0: no objective reads them, and the
        ``[R, L, V]`` output layer is the largest single cost of a forward pass.
        """
        model = model or self.policy
        L_ = input_ids.shape[1]
        keep = 0
        if loss_mask is not None and bool(loss_mask.any()):
            first = int(loss_mask.any(0).nonzero()[0])
            keep = L_ - max(first - 1, 0)
        if not 0 < keep < L_:
            out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return F_.token_logprobs(out.logits, input_ids, self.hparams.logprob_chunk_rows)
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep)
        logps = F_.token_logprobs(out.logits, input_ids[:, L_ - keep :], self.hparams.logprob_chunk_rows)
        return torch.nn.functional.pad(logps, (L_ - keep, 0), value=0.0)

    @torch.no_grad()
    def reference_forward(self, batch: dict[str, Any], prefix: str = "") -> torch.Tensor:
        """``[R, L]`` token log-probs of ``batch`` (its ``prefix``-named rows) under the reference."""
        ids, mask, lm = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"], batch.get(f"{prefix}loss_mask")
        if self.reference_mode == "copy":
            return self.token_logps(ids, mask, self.reference_model, lm)
        if self.reference_mode == "adapter":
            with self.policy.disable_adapter():
                return self.token_logps(ids, mask, loss_mask=lm)
        return self.token_logps(ids, mask, loss_mask=lm)  # precomputed when first needed: the policy as it is then

    def reference_logps(self, batch: dict[str, Any]) -> torch.Tensor:
        """``[R, L]`` reference token log-probs: the pre-pass's when present, else a forward."""
        if "ref_logps" in batch:
            return batch["ref_logps"]
        if self.reference_mode == "precomputed":
            raise RuntimeError("reference='precomputed' but the batch has no ref_logps (the pre-pass did not run)")
        return self.reference_forward(batch)

    def kl_reference_point(self, batch: dict[str, Any]) -> torch.Tensor:
        """KTO's ``z0`` from the batch's mismatched rows, summed over every rank."""
        with torch.no_grad():
            mask = batch["kl_loss_mask"]
            pol = F_.sequence_logps(self.token_logps(batch["kl_input_ids"], batch["kl_attention_mask"], loss_mask=mask), mask)
            ref_tokens = batch.get("kl_ref_logps")
            if ref_tokens is None:
                if self.reference_mode == "precomputed":
                    raise RuntimeError("reference='precomputed' but the batch has no kl_ref_logps (the pre-pass did not run)")
                ref_tokens = self.reference_forward(batch, prefix="kl_")
            ref = F_.sequence_logps(ref_tokens, mask)
        total = torch.stack([(pol - ref).sum(), torch.tensor(float(len(pol)), device=pol.device)])
        if self._trainer is not None and self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        return F_.kto_reference_point(total[0], total[1])

    # ------------------------------------------------------------------ objective
    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective's scalar loss and metrics to log."""
        obj = self.objective
        if obj.paired and batch["num_completions"] != 2:
            raise ValueError(f"objective {obj.name!r} needs pairs (data view 'pairs' or 'step_pairs')")
        logps = self.token_logps(batch["input_ids"], batch["attention_mask"], loss_mask=batch["loss_mask"])
        ref = self.reference_logps(batch) if obj.needs_reference else None
        z0 = self.kl_reference_point(batch) if obj.needs_kl else None
        return obj(Inputs(logps, ref, batch, z0))

    # ------------------------------------------------------------------ Lightning hooks
    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        loss, metrics = self.compute_loss(batch)
        bs = batch["input_ids"].shape[0] // batch["num_completions"]
        on_step = stage == "train"
        kw = {"batch_size": bs, "on_step": on_step, "on_epoch": not on_step}
        # validation is sharded across ranks: its loss is averaged over all of them (the other
        # metrics are rank 0's: a NaN skipped on one rank only would leave the others' sync waiting)
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=not on_step, **kw)
        for k, v in metrics.items():
            if not (isinstance(v, torch.Tensor) and torch.isnan(v)):
                self.log(f"{stage}/{k}", v, **kw)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.optim)
