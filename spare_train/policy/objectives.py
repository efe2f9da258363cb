"""Policy objectives as small components (torchtune style): each wraps the pure loss functions of
:mod:`spare_train.policy.losses`, says which data view it takes, whether it needs a reference
model and whether it trains on pairs, and is chosen in YAML by class path::

    objective:
      class_path: spare_train.policy.objectives.DPO
      init_args: {beta: 0.1, nll_weight: 1.0}

(or by name, ``objective: dpo``, with default settings). Adding an objective is one class here
plus its test. Every ``forward`` takes :class:`Inputs` and returns ``(loss, metrics)``.

| name | class | view | reference | pairs |
|---|---|---|---|---|
| ``sft`` / ``rft`` | :class:`SFT` / :class:`RFT` | ``filtered`` | no | no (the chosen rows of pairs) |
| ``step_weighted_sft`` | :class:`StepWeightedSFT` | ``all`` | no | no |
| ``orpo`` | :class:`ORPO` | ``pairs`` | no | yes |
| ``dpo`` / ``ipo`` | :class:`DPO` / :class:`IPO` | ``pairs`` | yes | yes |
| ``step_weighted_dpo`` | :class:`StepWeightedDPO` | ``pairs`` | yes | yes |
| ``step_dpo`` | :class:`StepDPO` | ``step_pairs`` | yes | yes |
| ``kto`` | :class:`KTO` | ``unpaired`` | yes | no |
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from spare_train.policy import losses as F_


@dataclass
class Inputs:
    """What an objective sees.

    Token log-probs ``[R, L]`` under the policy (and the reference, when it needs one), the batch,
    and KTO's reference point ``z0`` (when it needs one)."""

    logps: Tensor
    ref_logps: Tensor | None
    batch: dict[str, Any]
    kl_reference_point: Tensor | None = None


class Objective(nn.Module):
    """A policy training objective.

    Subclasses set ``name``, ``view``, ``needs_reference``, ``paired`` (and ``needs_kl`` for KTO's
    mismatched-pair estimate) and implement ``forward``."""

    name: ClassVar[str] = ""
    view: ClassVar[str] = "pairs"
    needs_reference: ClassVar[bool] = False
    paired: ClassVar[bool] = False
    needs_kl: ClassVar[bool] = False

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.name:
            OBJECTIVES[cls.name] = cls

    def forward(self, x: Inputs) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """``{"name": ..., **settings}``: plain values, how checkpoints store the objective."""
        params = inspect.signature(type(self).__init__).parameters.values()
        named = [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        return {"name": self.name, **{k: getattr(self, k) for k in named}}


#: objective name -> class (filled as the classes below are defined)
OBJECTIVES: dict[str, type[Objective]] = {}


def build_objective(value: Objective | str | dict[str, Any]) -> Objective:
    """An objective from an instance, a name (default settings) or a :meth:`Objective.spec` dict.

    Names are looked up in :data:`OBJECTIVES` only: a checkpoint's stored objective can never
    import a class of its own choosing.
    """
    if isinstance(value, Objective):
        return value
    spec = {"name": value} if isinstance(value, str) else dict(value)
    name = spec.pop("name", None)
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose from {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](**spec)


def _mean(x: Tensor) -> Tensor:
    return x.mean() if x.numel() else torch.tensor(math.nan, device=x.device)


def _halves(x: Inputs) -> tuple[slice, slice]:
    B = x.logps.shape[0] // 2
    return slice(0, B), slice(B, 2 * B)


def _pair_metrics(x: Inputs, rc: Tensor, rr: Tensor) -> dict[str, Tensor]:
    mask = x.batch["loss_mask"]
    c, r = _halves(x)
    seq = F_.sequence_logps(x.logps.detach(), mask)
    mean = F_.sequence_logps(x.logps.detach(), mask, average=True)
    margin = rc - rr
    return {
        "rewards/chosen": rc.mean(),
        "rewards/rejected": rr.mean(),
        "rewards/margin": margin.mean(),
        # ties (a policy equal to its reference) count as half right
        "rewards/accuracy": ((margin > 0).float() + 0.5 * (margin == 0).float()).mean(),
        "logps/chosen": seq[c].mean(),
        "logps/rejected": seq[r].mean(),
        "logps/accuracy": (mean[c] > mean[r]).float().mean(),
    }


# ------------------------------------------------------------------------------ supervised
class SFT(Objective):
    """Token cross-entropy on the kept candidates (or on the chosen rows of pairs).

    Args:
        focal_gamma: weight each token by ``(1 - p)^focal_gamma`` (0: plain cross-entropy; see
            :func:`spare_train.policy.losses.sft_loss`).
    """

    name, view = "sft", "filtered"

    def __init__(self, focal_gamma: float = 0.0):
        super().__init__()
        if focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}")
        self.focal_gamma = focal_gamma

    def forward(self, x: Inputs) -> tuple[Tensor, dict[str, Tensor]]:
        mask, n = x.batch["loss_mask"], x.batch["num_completions"]
        B = mask.shape[0] // n
        loss = F_.sft_loss(x.logps[:B], mask[:B], self.focal_gamma)
        return loss, {"logps": F_.sequence_logps(x.logps[:B].detach(), mask[:B]).mean()}


class RFT(SFT):
    """Rejection-sampling fine-tuning: SFT on the candidates the annotations accept.

    See https://arxiv.org/abs/2308.01825; what is kept is the ``filtered`` view's setting."""

    name = "rft"


class StepWeightedSFT(Objective):
    """Cross-entropy with each token weighted by its step's label.

    Optionally with unlikelihood on incorrect steps
    (:func:`spare_train.policy.losses.step_weighted_sft_loss`).

    Args:
        correct: weight of tokens in steps labeled correct.
        incorrect: weight of tokens in steps labeled incorrect (0 = skip them).
        other: weight of response tokens outside steps (separators, preamble, EOS).
        unlikelihood: weight of ``-log(1 - p)`` on tokens of incorrect steps.
    """

    name, view = "step_weighted_sft", "all"

    def __init__(self, correct: float = 1.0, incorrect: float = 0.0, other: float = 1.0, unlikelihood: float = 0.0):
        super().__init__()
        self.correct, self.incorrect, self.other, self.unlikelihood = correct, incorrect, other, unlikelihood

    def forward(self, x: Inputs) -> tuple[Tensor, dict[str, Tensor]]:
        b = x.batch
        loss = F_.step_weighted_sft_loss(x.logps, b["loss_mask"], b["step_ids"], b["step_labels"], self.correct,
                                         self.incorrect, self.other, self.unlikelihood)  # fmt: skip
        return loss, {"logps": F_.sequence_logps(x.logps.detach(), b["loss_mask"]).mean()}


# ------------------------------------------------------------------------------ preference
class _WithNLL(Objective):
    """Adds ``nll_weight`` x the chosen answers' mean token NLL (RPO, Pang et al. 2024)."""

    nll_weight: float = 0.0

    def _finish(self, x: Inputs, losses: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss = losses.mean()
        metrics = _pair_metrics(x, rc, rr)
        if self.nll_weight:
            c, _ = _halves(x)
            nll = F_.sft_loss(x.logps[c], x.batch["loss_mask"][c])
            metrics["nll"] = nll.detach()
            loss = loss + self.nll_weight * nll
        if x.ref_logps is not None:
            mask = x.batch["loss_mask"]
            metrics["kl"] = ((x.logps.detach() - x.ref_logps) * mask).sum() / mask.sum().clamp(min=1)
        return loss, metrics


class DPO(_WithNLL):
    """DPO, sigmoid form (https://arxiv.org/abs/2305.18290), on sequence log-probs.

    Args:
        beta: temperature of the implicit reward.
        label_smoothing: > 0 is conservative DPO.
        nll_weight: adds this times the chosen answers' mean token NLL (DPO + NLL, "RPO"). DPO
            alone can lower the chosen answers' likelihood too and wreck greedy decoding.
    """

    name, view, needs_reference, paired = "dpo", "pairs", True, True

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, nll_weight: float = 0.0):
        super().__init__()
        self.beta, self.label_smoothing, self.nll_weight = beta, label_smoothing, nll_weight

    def forward(self, x: Inputs) -> tuple[Tensor, dict[str, Tensor]]:
        mask = x.batch["loss_mask"]
        c, r = _halves(x)
        pol, ref = F_.sequence_logps(x.logps, mask), F_.sequence_logps(x.ref_logps, mask)
        losses, rc, rr = F_.dpo_loss(pol[c], pol[r], ref[c], ref[r], self.beta, self.label_smoothing)
        return self._finish(x, losses, rc, rr)


class IPO(_WithNLL):
    """IPO (https://arxiv.org/abs/2310.12036) on mean per-token log-probs (length-free margin).

    Args:
        beta: the target margin is ``1 / (2 beta)``.
        nll_weight: adds this times the chosen answers' mean token NLL.
    """

    name, view, needs_reference, paired = "ipo", "pairs", True, True

    def __init__(self, beta: float = 0.1, nll_weight: float = 0.0):
        super().__init__()
        self.beta, self.nll_weight = beta, nll_weight

    def forward(self, x: Inputs) -> tuple[Tensor, dict[str, Tensor]]:
        mask = x.batch["loss_mask"]
        c, r = _halves(x)
        pol = F_.sequence_logps(x.logps, mask, average=True)
        ref = F_.sequence_logps(x.ref_logps, mask, average=True)
        losses, rc, rr = F_.ipo_loss(pol[c], pol[r], ref[c], ref[r], self.beta)
        return self._finish(x, losses, rc, rr)


class ORPO(Objective):
    """ORPO: SFT on the chosen answer plus an odds-ratio term, no reference model.

    https://arxiv.org/abs/2403.07691. The SPARE paper used ``beta`` (ORPO's lambda) 0.2.

    Args:
        beta: weight of the odds-ratio term (the paper's lambda).
    """

    name, view, paired = "orpo", "pairs", True

    def __init__(self, beta: float = 0.1):
        super().__init__()
        self.beta = beta

    def forward(self, x: Inputs) -> tuple[Tensor, dict[str, Tensor]]:
        c, r = _halves(x)
        mean = F_.sequence_logps(x.logps, x.batch["loss_mask"], average=True)
        losses, rc, rr = F_.orpo_loss(mean[c], mean[r], -mean[c], self.beta)
        return losses.mean(), _pair_metrics(x, rc, rr)


class StepDPO(_WithNLL):
    """Step-DPO (https://arxiv.org/abs/2406.18629): DPO on the step(s) after a shared correct prefix.

    Args:
        beta: temperature of the implicit reward.
        steps: how many steps after the shared prefix count (the paper: 1); None = the rest.
        nll_weight: adds this times the chosen answers' mean token NLL.
    """

    name, view, needs_reference, paired = "step_dpo", "step_pairs", True, True

    def __init__(self, beta: float = 0.1, steps: int | None = 1, nll_weight: float = 0.0):
        super().__init__()
        self.beta, self.steps, self.nll_weight = beta, steps, nll_weight

    def forward(self, x: Inputs) -> tuple[Tensor, dict[str, Tensor]]:
        b = x.batch
        c, r = _halves(x)
        mask, ids = b["loss_mask"], b["step_ids"]
        losses, rc, rr = F_.step_dpo_loss(
            x.logps[c], x.logps[r], x.ref_logps[c], x.ref_logps[r], mask[c], mask[r], ids[c], ids[r],
            b["shared_steps"], self.beta, self.steps,
        )  # fmt: skip
        return self._finish(x, losses, rc, rr)


class StepWeightedDPO(_WithNLL):
    """DPO whose log-ratios weight tokens before / from the rejected answer's first error apart.

    Args:
        beta: temperature of the implicit reward.
        before_error: weight of tokens before the rejected answer's first error.
        after_error: weight of tokens from that step on.
        nll_weight: adds this times the chosen answers' mean token NLL.
    """

    name, view, needs_reference, paired = "step_weighted_dpo", "pairs", True, True

    def __init__(self, beta: float = 0.1, before_error: float = 0.5, after_error: float = 1.0, nll_weight: float = 0.0):
        super().__init__()
        self.beta, self.before_error, self.after_error, self.nll_weight = beta, before_error, after_error, nll_weight

    def forward(self, x: Inputs) -> tuple[Tensor, dict[str, Tensor]]:
        b = x.batch
        c, r = _halves(x)
        fe = b["first_error"].repeat(2)
        wt = F_.error_weights(b["step_ids"], b["loss_mask"], fe, self.before_error, self.after_error)
        losses, rc, rr = F_.step_weighted_dpo_loss(x.logps[c], x.logps[r], x.ref_logps[c], x.ref_logps[r], wt[c], wt[r],
                                                   self.beta)  # fmt: skip
        return self._finish(x, losses, rc, rr)


class KTO(Objective):
    """KTO (https://arxiv.org/abs/2402.01306) on unpaired desirable / undesirable completions.

    The reference point ``z0`` is the paper's estimate: the policy-vs-reference log-ratio of
    *mismatched* pairs (each prompt with the completion of another question's example, see
    :func:`spare_train.data.policy.mismatched_partners`), averaged over every rank's batch,
    clamped at 0 and detached.

    Args:
        beta: temperature of the implicit reward.
        desirable_weight: KTO's lambda_D.
        undesirable_weight: KTO's lambda_U.
    """

    name, view, needs_reference, needs_kl = "kto", "unpaired", True, True

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
        super().__init__()
        self.beta, self.desirable_weight, self.undesirable_weight = beta, desirable_weight, undesirable_weight

    def forward(self, x: Inputs) -> tuple[Tensor, dict[str, Tensor]]:
        mask, d = x.batch["loss_mask"], x.batch["desirable"].bool()
        pol, ref = F_.sequence_logps(x.logps, mask), F_.sequence_logps(x.ref_logps, mask)
        z0 = x.kl_reference_point if x.kl_reference_point is not None else torch.zeros((), device=pol.device)
        losses, rewards = F_.kto_loss(pol, ref, d, z0, self.beta, self.desirable_weight, self.undesirable_weight)
        return losses.mean(), {"kto_z0": z0, "rewards/desirable": _mean(rewards[d]), "rewards/undesirable": _mean(rewards[~d])}
