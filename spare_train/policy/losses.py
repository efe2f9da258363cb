"""Policy objectives for offline RL from step annotations: plain tensors in, tensors out.

Conventions (``R`` rows, ``L`` tokens; a preference batch has ``R = 2B``, chosen rows first):

- ``token_logps [R, L]``: ``log p(x_t | x_<t)`` of the token *at* position ``t`` (0 at ``t = 0``),
  from :func:`token_logprobs`. Every per-token tensor is aligned on token positions, not shifted.
- ``mask [R, L]`` bool: tokens that carry loss (response tokens; never prompt or padding).
- ``step_ids [R, L]`` long: index of the step a token belongs to, -1 for prompt, separators, suffix.
- ``step_labels [R, S]`` float: label per step, :data:`~spare_train.records.IGNORE` (or NaN) unlabeled.
- Sequence log-probs ``[B]`` are sums over the mask unless a docstring says "mean" (per token).

The losses return per-example losses ``[B]`` (reduce with ``.mean()``) and, for the preference
objectives, the implicit rewards of chosen and rejected (detached) for logging.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from spare_train.records import IGNORE


# ------------------------------------------------------------------------------ log-probs
class _TakenLogprob(torch.autograd.Function):
    """``logits[n, t_n] - logsumexp(logits[n])`` for ``logits [N, V]``, ``targets [N]``, in fp32.

    The backward writes ``g * (onehot - softmax)`` straight into the gradient, one pass per chunk
    of ``chunk`` rows. Autograd's own gather / logsumexp pair recomputes the forward under the
    checkpoint that bounded its memory, zero-fills an ``[N, V]`` gradient for the gather and adds
    two of them; at a 151k vocabulary that made a DPO step on CPU twice as long and its peak
    memory 0.5 GB higher (docs/benchmarks.md).
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, chunk: int) -> Tensor:
        lse = torch.cat([torch.logsumexp(logits[i : i + chunk].float(), dim=-1) for i in range(0, len(logits), chunk)])
        ctx.save_for_backward(logits, targets, lse)
        ctx.chunk = chunk
        return logits.gather(-1, targets[:, None]).squeeze(-1).float() - lse

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None]:
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        g = grad_out[:, None].float()
        for i in range(0, len(logits), ctx.chunk):
            sl = slice(i, i + ctx.chunk)
            if logits.dtype == torch.float32:  # the softmax is built in place in the gradient buffer
                part = torch.sub(logits[sl], lse[sl, None], out=grad[sl])
            else:
                part = logits[sl].float().sub_(lse[sl, None])
            part.exp_().mul_(-g[sl]).scatter_add_(-1, targets[sl, None], g[sl])
            if part.data_ptr() != grad[sl].data_ptr():
                grad[sl] = part
        return grad, None, None


def token_logprobs(logits: Tensor, input_ids: Tensor, chunk_rows: int = 1) -> Tensor:
    """Log-prob of each taken token, ``[R, L]``, position 0 set to 0.

    ``logits [R, L, V]`` are the model's outputs for ``input_ids [R, L]`` (position ``t`` predicts
    ``t + 1``). Computed as ``gather - logsumexp`` in fp32, ``chunk_rows`` rows at a time, so only
    one chunk's fp32 ``[chunk_rows, L, V]`` temporary exists at once (forward or backward) instead
    of a full-batch log-softmax; the gradient is written in one pass per chunk (:class:`_TakenLogprob`).
    """
    R, L_, V = logits.shape
    targets = F.pad(input_ids[:, 1:], (0, 1), value=0)  # the last position predicts nothing: dropped below
    out = _TakenLogprob.apply(logits.reshape(R * L_, V), targets.reshape(-1), max(1, chunk_rows) * L_)
    return F.pad(out.view(R, L_)[:, :-1], (1, 0), value=0.0)


def sequence_logps(token_logps: Tensor, mask: Tensor, weights: Tensor | None = None, average: bool = False) -> Tensor:
    """``sum_t w_t * mask_t * logp_t`` per row ``[R]``; ``average`` divides by the mask count."""
    m = mask.to(token_logps.dtype)
    if weights is not None:
        m = m * weights
    total = (token_logps * m).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


# ------------------------------------------------------------------------------ step weights
def continuation_mask(step_ids: Tensor, mask: Tensor, start_step: Tensor, num_steps: int | None = None) -> Tensor:
    """Masked tokens from the first token of step ``start_step[r]`` on (``[R, L]`` bool).

    With ``num_steps`` only up to (not including) the first token of step ``start + num_steps``.
    A negative ``start_step`` keeps the whole mask; a start step absent from the row (truncated)
    keeps nothing.
    """
    L = step_ids.shape[1]
    pos = torch.arange(L, device=step_ids.device)

    def first_pos(step: Tensor) -> Tensor:
        hit = step_ids == step.unsqueeze(1)
        return torch.where(hit.any(1), hit.int().argmax(1), torch.full_like(step, L))

    begin = torch.where(start_step < 0, torch.zeros_like(start_step), first_pos(start_step))
    keep = pos.unsqueeze(0) >= begin.unsqueeze(1)
    if num_steps is not None:
        stop = torch.where(start_step < 0, torch.full_like(start_step, L), first_pos(start_step + num_steps))
        keep &= pos.unsqueeze(0) < stop.unsqueeze(1)
    return keep & mask


def token_step_labels(step_ids: Tensor, step_labels: Tensor) -> Tensor:
    """Each token's step label ``[R, L]``; NaN for tokens outside any step and unlabeled steps."""
    if not step_labels.shape[1]:
        return torch.full(step_ids.shape, float("nan"), device=step_ids.device)
    idx = step_ids.clamp(min=0, max=step_labels.shape[1] - 1)
    y = step_labels.float().gather(1, idx)
    unlabeled = (step_ids < 0) | (y == IGNORE) | torch.isnan(y)
    return torch.where(unlabeled, torch.full_like(y, float("nan")), y)


def label_weights(
    step_ids: Tensor,
    step_labels: Tensor,
    correct: float = 1.0,
    incorrect: float = 0.0,
    other: float = 1.0,
) -> Tensor:
    """Per-token weight from its step's label: ``correct * y + incorrect * (1 - y)`` (soft labels
    interpolate); tokens outside any step, and steps without a label, get ``other``.

    ``step_labels [R, S]`` (``IGNORE``-padded); returns ``[R, L]`` float.
    """
    y = token_step_labels(step_ids, step_labels)
    w = correct * y + incorrect * (1.0 - y)
    return torch.where(torch.isnan(y), torch.full_like(w, other), w)


# ------------------------------------------------------------------------------ supervised
def sft_loss(token_logps: Tensor, mask: Tensor, focal_gamma: float = 0.0) -> Tensor:
    """Token cross-entropy averaged over all masked tokens of the batch (SFT, and RFT on filtered
    candidates: https://arxiv.org/abs/2308.01825). Scalar.

    ``focal_gamma > 0`` weights each token by ``(1 - p)^gamma`` (focal loss, Lin et al. 2017,
    https://arxiv.org/abs/1708.02002; ``p`` its probability, the weight not differentiated): tokens
    the model already predicts stop drowning the few it does not, such as a critic's verdicts among
    the words of its critique. The sum is still divided by the number of tokens."""
    if focal_gamma:
        weights = (1 - token_logps.detach().exp()).clamp(min=0) ** focal_gamma
        return -(token_logps * weights * mask).sum() / mask.sum().clamp(min=1)
    return -(token_logps * mask).sum() / mask.sum().clamp(min=1)


rft_loss = sft_loss


def step_weighted_sft_loss(
    token_logps: Tensor,
    mask: Tensor,
    step_ids: Tensor,
    step_labels: Tensor,
    correct_weight: float = 1.0,
    incorrect_weight: float = 0.0,
    other_weight: float = 1.0,
    unlikelihood_weight: float = 0.0,
) -> Tensor:
    """Cross-entropy with each token weighted by its step's label; scalar.

    A token of a correct step gets ``correct_weight``, of an incorrect one ``incorrect_weight``
    (soft labels interpolate), others ``other_weight``. With ``unlikelihood_weight > 0``, tokens
    of incorrect steps additionally get ``-log(1 - p)`` (unlikelihood training,
    https://arxiv.org/abs/1908.04319) times ``unlikelihood_weight * (1 - y)``, pushing their
    probability down. The sum is divided by the number of masked tokens, so the scale does not
    depend on how many steps are wrong.
    """
    w = label_weights(step_ids, step_labels, correct_weight, incorrect_weight, other_weight)
    loss = -token_logps * w
    if unlikelihood_weight:
        y = token_step_labels(step_ids, step_labels)
        wrong = torch.where(torch.isnan(y), torch.zeros_like(y), 1.0 - y)
        p = token_logps.exp().clamp(max=1.0 - 1e-6)
        loss = loss - unlikelihood_weight * wrong * torch.log1p(-p)
    return (loss * mask).sum() / mask.sum().clamp(min=1)


# ------------------------------------------------------------------------------ preference
def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO, sigmoid form (https://arxiv.org/abs/2305.18290); ``label_smoothing`` > 0 is the
    conservative variant. Inputs are sequence log-probs ``[B]``.

    Returns ``(losses [B], chosen_rewards [B], rejected_rewards [B])``; a reward is
    ``beta * (log pi - log pi_ref)``.
    """
    logits = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    return losses, _reward(policy_chosen, ref_chosen, beta), _reward(policy_rejected, ref_rejected, beta)


def ipo_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float = 0.1
) -> tuple[Tensor, Tensor, Tensor]:
    """IPO (https://arxiv.org/abs/2310.12036): ``(h - 1 / (2 beta))^2`` with ``h`` the log-ratio
    margin. Pass *mean* per-token log-probs (as TRL does) so the target margin is length-free."""
    logits = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    losses = (logits - 1.0 / (2.0 * beta)) ** 2
    return losses, _reward(policy_chosen, ref_chosen, beta), _reward(policy_rejected, ref_rejected, beta)


def orpo_loss(
    chosen_mean_logps: Tensor, rejected_mean_logps: Tensor, chosen_nll: Tensor, beta: float = 0.1
) -> tuple[Tensor, Tensor, Tensor]:
    """ORPO (https://arxiv.org/abs/2403.07691): ``nll - beta * log sigmoid(log odds ratio)``, no
    reference model. ``beta`` is the paper's lambda (the SPARE paper used 0.2).

    The odds ``p / (1 - p)`` use the length-normalised (mean per-token) log-probs ``[B]``;
    ``chosen_nll [B]`` is the chosen answer's mean token cross-entropy. Rewards are
    ``beta * mean log-prob``.
    """
    log_odds = (chosen_mean_logps - rejected_mean_logps) - (
        torch.log1p(-chosen_mean_logps.exp().clamp(max=1 - 1e-6))
        - torch.log1p(-rejected_mean_logps.exp().clamp(max=1 - 1e-6))
    )
    losses = chosen_nll - beta * F.logsigmoid(log_odds)
    return losses, (beta * chosen_mean_logps).detach(), (beta * rejected_mean_logps).detach()


def kto_reference_point(kl_sum: Tensor, kl_count: Tensor) -> Tensor:
    """KTO's reference point ``z0``: the estimate of ``KL(pi || pi_ref)`` from *mismatched*
    (prompt, completion) pairs, ``sum(log pi - log pi_ref) / count`` over every rank's pairs,
    clamped at 0 and detached (no gradient flows through it), as the KTO authors compute it
    (https://arxiv.org/abs/2402.01306; HALOs). Pass the sums and counts already summed across
    ranks (:meth:`spare_train.policy.module.PolicyModule` does)."""
    return (kl_sum / kl_count.clamp(min=1)).clamp(min=0).detach()


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    reference_point: Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """KTO (https://arxiv.org/abs/2402.01306) on unpaired examples ``[B]``.

    Desirable: ``w_D * (1 - sigmoid(beta * (r - z0)))``; undesirable:
    ``w_U * (1 - sigmoid(beta * (z0 - r)))``, with ``r = log pi - log pi_ref`` and ``z0`` from
    :func:`kto_reference_point`. Returns ``(losses [B], rewards [B])``.
    """
    r = policy_logps - ref_logps
    good = desirable_weight * (1 - torch.sigmoid(beta * (r - reference_point)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (reference_point - r)))
    return torch.where(desirable.bool(), good, bad), (beta * r).detach()


def step_dpo_loss(
    policy_chosen_tokens: Tensor,
    policy_rejected_tokens: Tensor,
    ref_chosen_tokens: Tensor,
    ref_rejected_tokens: Tensor,
    chosen_mask: Tensor,
    rejected_mask: Tensor,
    chosen_step_ids: Tensor,
    rejected_step_ids: Tensor,
    shared_steps: Tensor,
    beta: float = 0.1,
    num_steps: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Step-DPO (https://arxiv.org/abs/2406.18629): DPO on the continuation after a shared prefix.

    Chosen and rejected rows share their first ``shared_steps[b]`` steps (the rejected answer's
    correct steps before its first error; see :func:`spare_train.pairs.step_dpo_prefix`); only
    tokens from step ``shared_steps`` on count (the next ``num_steps`` steps, or the rest when
    None). Token tensors are ``[B, L]``.
    """
    cm = continuation_mask(chosen_step_ids, chosen_mask, shared_steps, num_steps)
    rm = continuation_mask(rejected_step_ids, rejected_mask, shared_steps, num_steps)
    return dpo_loss(
        sequence_logps(policy_chosen_tokens, cm),
        sequence_logps(policy_rejected_tokens, rm),
        sequence_logps(ref_chosen_tokens, cm),
        sequence_logps(ref_rejected_tokens, rm),
        beta,
    )


def step_weighted_dpo_loss(
    policy_chosen_tokens: Tensor,
    policy_rejected_tokens: Tensor,
    ref_chosen_tokens: Tensor,
    ref_rejected_tokens: Tensor,
    chosen_weights: Tensor,
    rejected_weights: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO whose log-ratios are token sums weighted per step, ``sum_t w_t (log pi - log pi_ref)``
    (weights ``[B, L]``, zero outside the mask). :func:`error_weights` makes weights that
    emphasise the steps from the rejected answer's first error on; ``w = 1`` is plain DPO."""
    return dpo_loss(
        (policy_chosen_tokens * chosen_weights).sum(-1),
        (policy_rejected_tokens * rejected_weights).sum(-1),
        (ref_chosen_tokens * chosen_weights).sum(-1),
        (ref_rejected_tokens * rejected_weights).sum(-1),
        beta,
    )


def error_weights(
    step_ids: Tensor, mask: Tensor, first_error: Tensor, before: float = 0.5, after: float = 1.0
) -> Tensor:
    """Token weights ``[R, L]``: ``before`` on masked tokens ahead of step ``first_error[r]``,
    ``after`` from its first token on; rows with ``first_error < 0`` get ``after`` throughout.
    For a pair, pass the rejected answer's first error for both rows: both are weighted from the
    step where they part."""
    late = continuation_mask(step_ids, mask, first_error)
    w = torch.where(late, torch.full(mask.shape, after, device=mask.device), torch.full(mask.shape, before, device=mask.device))
    return w * mask


def _reward(policy: Tensor, ref: Tensor, beta: float) -> Tensor:
    return (beta * (policy - ref)).detach()
