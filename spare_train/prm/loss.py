"""The PRM training loss: two-class cross-entropy per step, with soft targets and step masks."""

from __future__ import annotations

import torch
from torch import Tensor

from spare_train.labels import up_to_first_error
from spare_train.records import IGNORE


def last_step_mask(step_mask: Tensor) -> Tensor:
    """True only at each row's last real step (rows hold real steps first). ``[B, S]`` bool."""
    mask = step_mask.bool()
    last = mask.long().sum(1) - 1
    out = torch.zeros_like(mask)
    has = last >= 0
    out[has.nonzero(as_tuple=True)[0], last[has]] = True
    return out


def soft_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    *,
    class_weights: tuple[float, float] | None = None,
    last_step_only: bool = False,
    step_mask: Tensor | None = None,
    first_error_only: bool = False,
) -> Tensor:
    """Two-class cross-entropy with soft targets, averaged over labeled steps.

    ``logits``: ``[B, S, 2]`` (incorrect, correct). ``labels``: ``[B, S]``, P(correct) in [0, 1];
    ``-100`` (or NaN) is ignored. Hard 0/1 labels give ordinary cross-entropy.
    ``class_weights`` ``(w_incorrect, w_correct)`` weight each target term; the mean is taken over
    the summed target weights, which for hard labels equals ``F.cross_entropy(weight=…)``.
    ``last_step_only``: only each row's last real step (per ``step_mask``, else per labels)
    counts -- the outcome-style objective. ``first_error_only``: only steps up to and including
    each row's first incorrect one count (:func:`up_to_first_error`). Returns 0 (with a graph)
    when nothing is labeled.
    """
    labels = labels.float()
    valid = (labels != IGNORE) & ~labels.isnan()
    if first_error_only:
        valid = valid & up_to_first_error(labels)
    if last_step_only:
        valid = valid & last_step_mask(step_mask if step_mask is not None else valid)
    y = torch.where(valid, labels, torch.zeros_like(labels)).clamp(0.0, 1.0)
    target = torch.stack([1.0 - y, y], dim=-1)
    if class_weights is not None:
        target = target * torch.tensor(class_weights, dtype=target.dtype, device=target.device)
    logp = logits.float().log_softmax(-1)
    per_step = -(target * logp).sum(-1)
    weight = target.sum(-1) * valid
    return (per_step * valid).sum() / weight.sum().clamp_min(1e-12)


