"""``PRMEvaluator``: the metrics of :mod:`spare_train.prm.metrics` as a torchmetrics ``Metric``,
so a LightningModule's validation loop gathers scores across DDP ranks and reports
:func:`~spare_train.prm.metrics.prm_report` once per epoch."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from spare_train.prm.metrics import DEFAULT_TAU_GRID, HOWS, prm_report


def stable_hash(text: str) -> int:
    """A process-independent int64 for a string (Python's ``hash`` is salted per process); 0 is
    reserved for "no string", so it is never returned."""
    h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)
    return h or 1


class PRMEvaluator(Metric):
    """Gathers per-step scores and labels over a validation epoch and reports :func:`prm_report`.

    States are flat tensors concatenated across batches and DDP ranks (``dist_reduce_fx="cat"``);
    ``group_ids`` and ``answers`` travel as :func:`stable_hash` ids, so no Python objects need
    gathering. Usage in a LightningModule::

        self.val_metrics = PRMEvaluator()
        # validation_step:
        self.val_metrics.update(probs, batch["step_labels"], batch["step_mask"], batch["outcome"],
                                batch["group_ids"], batch["answers"])
        # on_validation_epoch_end:
        self.log_dict(self.val_metrics.compute()); self.val_metrics.reset()

    Samples a ``DistributedSampler`` pads with are counted twice, as usual for torchmetrics.
    """

    full_state_update = False
    _STATES = ("scores", "labels", "lengths", "outcome", "group", "answer")

    def __init__(
        self,
        threshold: float = 0.5,
        tau: float | None = None,
        tau_grid: Sequence[float] = DEFAULT_TAU_GRID,
        hows: Sequence[str] = HOWS,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.threshold, self.tau, self.tau_grid, self.hows = threshold, tau, tuple(tau_grid), tuple(hows)
        for name in self._STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        step_scores: Tensor,
        step_labels: Tensor,
        step_mask: Tensor,
        outcome: Tensor,
        group_ids: Sequence[str],
        answers: Sequence[str | None],
    ) -> None:
        """``step_scores``/``step_labels``/``step_mask``: ``[B, S]``, real steps first in each row;
        labels -100 where unlabeled. ``outcome``: ``[B]``, NaN when unknown. ``answers``: "" or
        ``None`` when unknown."""
        mask = step_mask.bool()
        if not len(group_ids) == len(answers) == mask.shape[0] == outcome.numel():
            raise ValueError("PRMEvaluator.update: group_ids, answers and outcome need one entry per row")
        self.scores.append(step_scores.detach().float()[mask])
        self.labels.append(step_labels.detach().float()[mask])
        self.lengths.append(mask.sum(1).long())
        self.outcome.append(outcome.detach().float().reshape(-1))
        dev = step_scores.device
        self.group.append(torch.tensor([stable_hash(g) for g in group_ids], dtype=torch.long, device=dev))
        ans = [stable_hash(a) if a else 0 for a in answers]
        self.answer.append(torch.tensor(ans, dtype=torch.long, device=dev))

    def compute(self) -> dict[str, float]:
        kw = dict(threshold=self.threshold, tau=self.tau, tau_grid=self.tau_grid, hows=self.hows)
        if isinstance(self.lengths, list) and not self.lengths:  # no update since reset
            return prm_report([], [], [], [], [], **kw)
        scores, labels, lengths, outcome, group, answer = (
            dim_zero_cat(getattr(self, name)).cpu() for name in self._STATES
        )
        sizes = lengths.tolist()
        return prm_report(
            [t.tolist() for t in torch.split(scores, sizes)],
            [t.tolist() for t in torch.split(labels, sizes)],
            outcome.tolist(),
            group.tolist(),
            [a if a != 0 else None for a in answer.tolist()],
            **kw,
        )
