"""``OfflineRLModule``: train a policy from step annotations with one objective chosen by name.

Wiring only; the maths is in :mod:`spare_train.losses`, the data in
:mod:`spare_train.offline_rl_data`. Objectives:

| objective | data view | reference model |
|---|---|---|
| ``sft``, ``rft`` | ``filtered`` (or the chosen side of pairs) | no |
| ``step_weighted_sft`` | ``all`` | no |
| ``orpo`` | ``pairs`` | no |
| ``dpo``, ``ipo``, ``step_weighted_dpo`` | ``pairs`` | yes |
| ``step_dpo`` | ``step_pairs`` | yes |
| ``kto`` | ``unpaired`` | yes |

Reference (``reference``): ``adapter`` runs the same network with its LoRA adapters disabled (no
second copy); ``copy`` keeps a frozen copy made before training (kept out of checkpoints);
``precomputed`` runs the reference once over the data at the start of ``fit`` (the data module
caches the token log-probs as columns), so training holds one model and does one forward per
step; ``auto`` picks ``adapter`` under LoRA and ``copy`` otherwise (``none`` when the
objective needs no reference).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import lightning as L
import torch

from spare_train import losses as F_
from spare_train.backbone import BackboneConfig, load_backbone, trainable_names

Objective = Literal[
    "sft", "rft", "step_weighted_sft", "dpo", "ipo", "orpo", "kto", "step_dpo", "step_weighted_dpo"
]
CHECKPOINT_MARKER = "spare_offline_rl"
NEEDS_REFERENCE = {"dpo", "ipo", "kto", "step_dpo", "step_weighted_dpo"}
PAIRED = {"dpo", "ipo", "orpo", "step_dpo", "step_weighted_dpo"}


@dataclass
class StepWeights:
    """Token weights by step, for ``step_weighted_sft`` and ``step_weighted_dpo``.

    Args:
        correct: SFT weight of tokens in steps labeled correct.
        incorrect: SFT weight of tokens in steps labeled incorrect (0 = skip them).
        other: SFT weight of response tokens outside steps (separators, preamble, EOS).
        unlikelihood: weight of the unlikelihood term ``-log(1 - p)`` on incorrect steps.
        before_error: DPO weight of tokens before the rejected answer's first error.
        after_error: DPO weight of tokens from that step on.
    """

    correct: float = 1.0
    incorrect: float = 0.0
    other: float = 1.0
    unlikelihood: float = 0.0
    before_error: float = 0.5
    after_error: float = 1.0


class OfflineRLModule(L.LightningModule):
    """A causal-LM policy trained offline with ``objective``.

    Args:
        backbone: the policy model (path, dtype, LoRA, quantisation).
        objective: loss, see the table in the module docstring.
        beta: DPO/IPO/KTO/Step-DPO temperature; ORPO's lambda.
        reference: ``auto``, ``adapter``, ``copy``, ``precomputed`` or ``none``.
        label_smoothing: conservative-DPO smoothing (``dpo`` only).
        step_weights: token weights for the step-weighted objectives.
        step_dpo_steps: Step-DPO prefers only this many steps after the shared prefix
            (the paper: 1); None = the whole continuation.
        kto_desirable_weight: KTO's lambda_D.
        kto_undesirable_weight: KTO's lambda_U.
        nll_weight: adds ``nll_weight`` x the chosen answers' mean token NLL to the pairwise
            objectives with a reference (DPO + NLL, "RPO": Pang et al. 2024; TRL's ``rpo_alpha``).
            DPO alone can lower the chosen answers' likelihood too and wreck greedy decoding;
            the NLL term keeps it up. ORPO has its own NLL term and ignores this.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of steps with linear warm-up; then linear decay to 0.
        logprob_chunk_rows: rows per chunk when turning logits into token log-probs.
        disable_dropout: set every dropout to 0 (policy and reference then see the same network).
    """

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        objective: Objective = "dpo",
        beta: float = 0.1,
        reference: Literal["auto", "adapter", "copy", "precomputed", "none"] = "auto",
        label_smoothing: float = 0.0,
        step_weights: StepWeights | None = None,
        step_dpo_steps: int | None = None,
        kto_desirable_weight: float = 1.0,
        kto_undesirable_weight: float = 1.0,
        nll_weight: float = 0.0,
        lr: float = 5e-5,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.0,
        logprob_chunk_rows: int = 1,
        disable_dropout: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.backbone_cfg = _backbone_config(backbone)
        self.objective = objective
        self.weights = StepWeights(**step_weights) if isinstance(step_weights, dict) else step_weights or StepWeights()
        # plain dicts in checkpoints, so that ``torch.load(weights_only=True)`` reads them back
        self.hparams["backbone"] = asdict(self.backbone_cfg)
        self.hparams["step_weights"] = asdict(self.weights)
        self.strict_loading = self.backbone_cfg.lora is None  # LoRA checkpoints keep trained tensors only
        self.policy: torch.nn.Module | None = None
        self._frozen: list[torch.nn.Module] = []  # the ``copy`` reference, hidden from state_dict
        self.reference_mode = reference

    @classmethod
    def from_model(cls, model: torch.nn.Module, **kwargs: Any) -> OfflineRLModule:
        """Wrap an already loaded policy (tests, demos, notebooks)."""
        module = cls(**kwargs)
        module.policy = model
        module.configure_model()
        return module

    # ------------------------------------------------------------------ setup
    def configure_model(self) -> None:
        if self.policy is None:
            self.policy = load_backbone(self.backbone_cfg)
        if self.hparams.disable_dropout:
            for m in self.policy.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0
        if self.reference_mode == "auto":
            from peft import PeftModel

            if self.objective not in NEEDS_REFERENCE:
                self.reference_mode = "none"
            else:
                self.reference_mode = "adapter" if isinstance(self.policy, PeftModel) else "copy"
        if self.objective in NEEDS_REFERENCE and self.reference_mode == "none":
            raise ValueError(f"objective {self.objective!r} needs a reference model; reference='none'")
        if self.reference_mode == "copy" and not self._frozen:
            ref = copy.deepcopy(self.policy).eval()
            ref.requires_grad_(False)
            self._frozen.append(ref)

    def on_fit_start(self) -> None:
        # from_pretrained returns eval-mode modules and Lightning keeps modes as it finds them;
        # gradient checkpointing only runs in train mode
        self.policy.train()
        if self.reference_mode == "precomputed":
            dm = self.trainer.datamodule
            if dm is None or not hasattr(dm, "precompute_reference"):
                raise ValueError("reference='precomputed' needs a data module with precompute_reference()")
            self.precompute_reference(dm)

    def precompute_reference(self, datamodule: Any) -> None:
        """Cache the reference log-probs (the policy as it is now) in ``datamodule``'s splits."""
        was_training = self.policy.training
        self.policy.eval()
        datamodule.precompute_reference(lambda b: self._reference_forward({k: _to(v, self.device) for k, v in b.items()}))
        self.policy.train(was_training)

    # ------------------------------------------------------------------ log-probs
    def token_logps(self, batch: dict[str, Any], model: torch.nn.Module | None = None) -> torch.Tensor:
        """``[R, L]`` log-probs of each batch token under ``model`` (default: the policy)."""
        model = model or self.policy
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        return F_.token_logprobs(out.logits, batch["input_ids"], self.hparams.logprob_chunk_rows)

    @torch.no_grad()
    def _reference_forward(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.reference_mode == "copy":
            ref = self._frozen[0]
            if next(ref.parameters()).device != self.device:
                ref.to(self.device)
            return self.token_logps(batch, ref)
        from peft import PeftModel

        if isinstance(self.policy, PeftModel):
            with self.policy.disable_adapter():
                return self.token_logps(batch)
        return self.token_logps(batch)  # precomputed at fit start: the policy is the reference

    def reference_logps(self, batch: dict[str, Any]) -> torch.Tensor:
        """``[R, L]`` reference token log-probs: cached columns when present, else a forward."""
        if "ref_logps" in batch:
            return batch["ref_logps"].to(self.device)
        if self.reference_mode == "precomputed":
            raise RuntimeError("reference='precomputed' but the batch has no ref_logps (pre-pass not run)")
        return self._reference_forward(batch)

    # ------------------------------------------------------------------ objective
    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective's scalar loss and metrics to log."""
        obj, hp, w = self.objective, self.hparams, self.weights
        mask, steps, labels = batch["loss_mask"], batch["step_ids"], batch["step_labels"]
        n = batch["num_completions"]
        if obj in PAIRED and n != 2:
            raise ValueError(f"objective {obj!r} needs pairs (data view 'pairs' or 'step_pairs')")
        tok = self.token_logps(batch)
        ref = self.reference_logps(batch) if obj in NEEDS_REFERENCE else None
        metrics: dict[str, torch.Tensor] = {}
        if ref is not None:
            metrics["kl"] = ((tok.detach() - ref) * mask).sum() / mask.sum().clamp(min=1)

        if obj in ("sft", "rft", "step_weighted_sft"):
            B = mask.shape[0] // n  # pairs: train on the chosen rows only
            if obj == "step_weighted_sft":
                loss = F_.step_weighted_sft_loss(
                    tok[:B], mask[:B], steps[:B], labels[:B], w.correct, w.incorrect, w.other, w.unlikelihood
                )
            else:
                loss = F_.sft_loss(tok[:B], mask[:B])
            metrics["logps"] = F_.sequence_logps(tok[:B].detach(), mask[:B]).mean()
            return loss, metrics
        if obj == "kto":
            pol, rf = F_.sequence_logps(tok, mask), F_.sequence_logps(ref, mask)
            z0 = F_.kto_reference_point(pol, rf)
            losses, rewards = F_.kto_loss(
                pol, rf, batch["desirable"], z0, hp.beta, hp.kto_desirable_weight, hp.kto_undesirable_weight
            )
            d = batch["desirable"].bool()
            metrics.update({"kto_z0": z0, "rewards/desirable": _mean(rewards[d]), "rewards/undesirable": _mean(rewards[~d])})
            return losses.mean(), metrics

        B = mask.shape[0] // 2
        c, r = slice(0, B), slice(B, 2 * B)
        if obj == "orpo":
            mean = F_.sequence_logps(tok, mask, average=True)
            losses, rc, rr = F_.orpo_loss(mean[c], mean[r], -mean[c], hp.beta)
        elif obj in ("dpo", "ipo"):
            pol = F_.sequence_logps(tok, mask, average=obj == "ipo")
            rf = F_.sequence_logps(ref, mask, average=obj == "ipo")
            if obj == "dpo":
                losses, rc, rr = F_.dpo_loss(pol[c], pol[r], rf[c], rf[r], hp.beta, hp.label_smoothing)
            else:
                losses, rc, rr = F_.ipo_loss(pol[c], pol[r], rf[c], rf[r], hp.beta)
        elif obj == "step_dpo":
            losses, rc, rr = F_.step_dpo_loss(
                tok[c], tok[r], ref[c], ref[r], mask[c], mask[r], steps[c], steps[r],
                batch["shared_steps"].to(self.device), hp.beta, hp.step_dpo_steps,
            )
        elif obj == "step_weighted_dpo":
            fe = batch["first_error"].to(self.device).repeat(2)
            wt = F_.error_weights(steps, mask, fe, w.before_error, w.after_error)
            losses, rc, rr = F_.step_weighted_dpo_loss(tok[c], tok[r], ref[c], ref[r], wt[c], wt[r], hp.beta)
        else:
            raise ValueError(f"unknown objective {obj!r}")
        loss = losses.mean()
        if obj != "orpo" and hp.get("nll_weight", 0.0):
            nll = F_.sft_loss(tok[c], mask[c])
            metrics["nll"] = nll.detach()
            loss = loss + hp.nll_weight * nll
        seq = F_.sequence_logps(tok.detach(), mask)
        margin = rc - rr
        metrics.update(
            {
                "rewards/chosen": rc.mean(),
                "rewards/rejected": rr.mean(),
                "rewards/margin": margin.mean(),
                # ties (a policy equal to its reference) count as half right
                "rewards/accuracy": ((margin > 0).float() + 0.5 * (margin == 0).float()).mean(),
                "logps/chosen": seq[c].mean(),
                "logps/rejected": seq[r].mean(),
                "logps/accuracy": (F_.sequence_logps(tok.detach(), mask, average=True)[c]
                                   > F_.sequence_logps(tok.detach(), mask, average=True)[r]).float().mean(),
            }
        )
        return loss, metrics

    # ------------------------------------------------------------------ Lightning hooks
    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        loss, metrics = self.compute_loss(batch)
        bs = batch["input_ids"].shape[0] // batch["num_completions"]
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=bs, on_step=on_step, on_epoch=not on_step)
        for k, v in metrics.items():
            if not (isinstance(v, torch.Tensor) and torch.isnan(v)):
                self.log(f"{stage}/{k}", v, batch_size=bs, on_step=on_step, on_epoch=not on_step)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer is not None else 1
        warm = int(self.hparams.warmup_ratio * total)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (total - step) / max(total - warm, 1))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the marker ``spare-train export`` recognises a policy checkpoint by, and its tokenizer
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        name = getattr(getattr(dm, "hparams", None), "tokenizer", None)
        checkpoint[CHECKPOINT_MARKER] = {"tokenizer": name if isinstance(name, str) else self.backbone_cfg.name_or_path}
        if self.backbone_cfg.lora is not None:  # as PRMModule: frozen (maybe quantised) weights reload from the base
            keep = trainable_names(self)
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        # the data module's config dataclasses (pairing, filtering) as dicts, for weights_only loading
        dhp = checkpoint.get("datamodule_hyper_parameters")
        if dhp:
            checkpoint["datamodule_hyper_parameters"] = {
                k: asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v for k, v in dhp.items()
            }

    # ------------------------------------------------------------------ export
    def export(self, out: str, tokenizer: Any, merge: bool = True) -> Any:
        """Write the policy as a Hugging Face folder (adapters merged when ``merge``; merging works
        on a copy, so the module keeps training with its adapters afterwards)."""
        from peft import PeftModel

        from spare_train.export import save_causal_lm

        model = copy.deepcopy(self.policy) if merge and isinstance(self.policy, PeftModel) else self.policy
        return save_causal_lm(model, tokenizer, out, merge=merge)


def _backbone_config(value: BackboneConfig | dict | None) -> BackboneConfig:
    from spare_train.prm import backbone_config  # accepts the ``asdict`` form stored in checkpoints

    return backbone_config(value)


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean() if x.numel() else torch.tensor(math.nan, device=x.device)


def _to(v: Any, device: torch.device) -> Any:
    return v.to(device) if isinstance(v, torch.Tensor) else v
