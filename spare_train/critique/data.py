"""``CritiqueDataModule``: critique SFT and refinement SFT data on the policy data path.

It is a :class:`~spare_train.data.PolicyDataModule` whose examples are single completions (the
``filtered`` view's shape, so the policy module's plain ``SFT`` objective trains on them with
the loss on the target tokens only) built by :mod:`spare_train.critique.views`:

* ``mode: critique``: prompt = the task's instruction + question + numbered steps + the fixed
  critique instruction; target = the critique (:class:`~spare_train.critique.template.CritiqueTemplate`).
* ``mode: refine``: prompt = question + an incorrect candidate + its critique + the refinement
  instruction; target = a correct solution of the same question.

The checkpoint records the mode and the template (``state_dict``), so ``spare-train export``
writes a critic or refiner folder whose model card shows the exact prompt.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any, Literal

from spare_train.critique.template import CritiqueTemplate
from spare_train.critique.views import RefineTarget, Unlabeled, critique_records, refinement_examples
from spare_train.data.policy import PolicyDataModule, Turn, response_text
from spare_train.records import CORRECT, StepRecord

#: where the checkpoint keeps what the export needs (see :meth:`CritiqueDataModule.state_dict`)
STATE_KEY = "spare_critique"


class CritiqueDataModule(PolicyDataModule):
    """Critique or refinement examples from step-annotated records, for SFT of a critic or refiner.

    Takes every :class:`~spare_train.data.AnnotationDataModule` argument (``train``, ``val``,
    ``format``, ``tokenizer``, ``batch_size``, …) and ``max_prompt_length``; the view is always
    ``filtered`` (one completion per example).

    Args:
        mode: ``critique`` (train a critic) or ``refine`` (train a refiner).
        unlabeled: a record with an unlabeled step is ``reject``ed or cut before it (``truncate``).
        refine_target: what a refiner learns to write: the ``reference`` solution or a correct
            ``candidate`` of the same question.
        quote_steps: the critique repeats each step before its explanation (see
            :class:`~spare_train.critique.template.CritiqueTemplate`).
        group_by_length: batch critiques of similar length. Off by default: a critique's length
            follows its verdicts (an explanation per verdict), so length-sorted batches each hold
            candidates with the same verdicts (91 % of a batch of 16 on the bundled data, against
            22 % shuffled), and a critic fits them by step position instead of checking the steps.
        max_length: tokens per prompt + target.
        batch_size: examples per batch.
    """

    def __init__(
        self,
        mode: Literal["critique", "refine"] = "critique",
        unlabeled: Unlabeled = "reject",
        refine_target: RefineTarget = "reference",
        quote_steps: bool = False,
        group_by_length: bool = False,
        max_length: int = 1024,
        batch_size: int = 4,
        **kwargs: Any,
    ):
        if kwargs.pop("view", None) not in (None, "filtered"):
            raise ValueError("CritiqueDataModule's view is always 'filtered' (one completion per example)")
        super().__init__(view="filtered", max_length=max_length, batch_size=batch_size,
                         group_by_length=group_by_length, **kwargs)  # fmt: skip
        self.template = CritiqueTemplate(quote_steps=quote_steps)
        # one completion per example, as the policy module's SFT expects; set explicitly, since
        # under LightningCLI the hyper-parameters are this class's arguments only
        self.hparams["view"] = "filtered"

    def groups(self, records: list[StepRecord]) -> tuple[list[list[StepRecord]], dict[str, Any]]:
        """One record per example; the critique (and the refinement target) ride in ``extra``."""
        hp = self.hparams
        if hp.mode == "critique":
            items = critique_records(records, hp.unlabeled, self.report, self.template)
            kept = [replace(r, extra={**r.extra, "critique": c}) for r, c in items]
            wrong = sum(c.first_error >= 0 for _, c in items)
            return [[r] for r in kept], {"summary": f"{len(kept)} critiques ({wrong} with an incorrect step)"}
        refs = refinement_examples(records, hp.refine_target, hp.unlabeled, hp.seed, self.report, self.template)
        kept = [replace(x.candidate, id=f"{x.candidate.id}->{x.target.id}",
                        extra={**x.candidate.extra, "critique": x.critique, "refine_target": x.target})
                for x in refs]  # fmt: skip
        return [[r] for r in kept], {"summary": f"{len(kept)} refinements (target: {hp.refine_target})"}

    def turn(self, record: StepRecord) -> Turn:
        critique = record.extra["critique"]
        if self.hparams.mode == "critique":
            text, spans = self.template.render_spans(critique)
            labels: list[float | None] = [float(ok) for ok in critique.verdicts]
            return Turn(self.template.prompt(record.prompt, record.steps, record.preamble), text, spans, labels)
        target = record.extra["refine_target"]
        text, spans = response_text(target)
        prompt = self.template.refine_prompt(record.prompt, record.steps, critique, record.preamble)
        return Turn(prompt, text, spans, [CORRECT] * len(spans))

    def state_dict(self) -> dict[str, Any]:
        """The read report, plus the mode and template (``spare-train export`` writes them into the
        critic's or refiner's folder)."""
        return {**super().state_dict(), STATE_KEY: {"mode": self.hparams.mode, "template": asdict(self.template)}}
