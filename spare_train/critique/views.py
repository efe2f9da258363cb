"""Critique and refinement examples from step-annotated records: pure functions, no tokenizer.

* :func:`critique_of`: a record's steps, labels and explanations as a :class:`Critique` (the
  critic's training target). A step without an explanation gets a templated one from its label
  (counted); a record with an unlabeled step is rejected, or cut before that step
  (``unlabeled="truncate"``).
* :func:`refinement_examples`: each incorrect candidate with its critique and a correct solution
  of the same question to learn (the refiner's training target, the paper's critique-guided
  refinement): the reference, or a correct candidate (``target="candidate"``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from spare_train.critique.template import TEMPLATE, Critique, CritiqueTemplate, clean_explanation
from spare_train.labels import cut_steps
from spare_train.records import CORRECT, StepRecord, group_by, is_label
from spare_train.report import DataError, Report

Unlabeled = Literal["reject", "truncate"]
RefineTarget = Literal["reference", "candidate"]

#: explanation of a step whose annotation has none, by verdict
TEMPLATED = {True: "This step is correct.", False: "This step is incorrect."}


def critique_of(record: StepRecord, unlabeled: Unlabeled = "reject", threshold: float = 0.5,
                template: CritiqueTemplate = TEMPLATE) -> tuple[StepRecord, Critique, int]:  # fmt: skip
    """``(record, critique, templated)``: the record (cut before its first unlabeled step under
    ``truncate``), its critique (a step is correct when its label is ``>= threshold``; explanations
    as ``template`` writes them) and how many explanations were templated. Raises
    ``DataError("unlabeled_step")`` when nothing is left."""
    k = next((i for i, x in enumerate(record.labels) if not is_label(x)), -1)
    if k >= 0:
        if unlabeled == "reject" or k == 0:
            where = str(record.source) if record.source else ""
            raise DataError("unlabeled_step", f"step {k + 1} has no label (unlabeled={unlabeled!r})", where, record.id)
        record = cut_steps(record, k)
    explanations = record.explanation or [None] * record.num_steps
    steps, templated = [], 0
    for step, label, text in zip(record.steps, record.labels, explanations, strict=True):
        ok = float(label) >= threshold
        text = clean_explanation(text or "")
        if not text:
            text, templated = TEMPLATED[ok], templated + 1
        steps.append(template.step_critique(step, text, ok))
    return record, Critique(tuple(steps)), templated


def critique_records(records: Sequence[StepRecord], unlabeled: Unlabeled = "reject", report: Report | None = None,
                     template: CritiqueTemplate = TEMPLATE) -> list[tuple[StepRecord, Critique]]:  # fmt: skip
    """:func:`critique_of` over ``records``; rejections, cuts and templated explanations go to
    ``report`` (``unlabeled_step``; notes ``critique_truncated``, ``critique_templated_explanations``)."""
    report = report if report is not None else Report(strict=True)
    out = []
    for r in records:
        try:
            kept, critique, templated = critique_of(r, unlabeled, template=template)
        except DataError as err:
            report.reject(err, stage="critique")
            continue
        if kept.num_steps < r.num_steps:
            report.note("critique_truncated")
        if templated:
            report.note("critique_templated_explanations", templated)
        out.append((kept, critique))
    return out


@dataclass
class Refinement:
    """An incorrect candidate, its critique, and a correct solution of the same question."""

    candidate: StepRecord
    critique: Critique
    target: StepRecord


def _is_correct(r: StepRecord, threshold: float = 0.5) -> bool:
    return all(is_label(x) and x >= threshold for x in r.labels) and r.outcome != 0


def _reference(group: Sequence[StepRecord]) -> StepRecord | None:
    ref = next((r for r in group if r.is_reference), None)
    if ref is not None:
        return ref
    steps = next((r.reference for r in group if r.reference), None)
    if not steps:
        return None
    first = group[0]
    return StepRecord(f"{first.group_id}#ref", first.group_id, first.prompt, list(steps), [CORRECT] * len(steps),
                      outcome=1, reference=list(steps), is_reference=True)  # fmt: skip


def refinement_examples(
    records: Sequence[StepRecord],
    target: RefineTarget = "reference",
    unlabeled: Unlabeled = "reject",
    seed: int = 0,
    report: Report | None = None,
    template: CritiqueTemplate = TEMPLATE,
) -> list[Refinement]:
    """One :class:`Refinement` per incorrect candidate (a step labeled incorrect) that has a target.

    ``reference``: the group's reference solution (a record read with ``add_reference``, else the
    candidates' ``reference`` steps). ``candidate``: a correct candidate of the same question (every
    step labeled correct and the outcome not wrong), drawn with a seed per candidate, so the choice
    does not depend on record order. Candidates without a target are counted (note
    ``refine_no_target``); correct candidates and references are not refinement examples.
    """
    report = report if report is not None else Report(strict=True)
    out = []
    for group in group_by(records, lambda r: r.group_id).values():
        candidates = [r for r in group if not r.is_reference]
        if target == "reference":
            ref = _reference(group)
            pool = [ref] if ref is not None else []
        else:
            pool = sorted((r for r in candidates if _is_correct(r)), key=lambda r: r.id)
        wrong = [r for r in candidates if r.first_error() >= 0]
        for rec, critique in critique_records(wrong, unlabeled, report, template):
            if critique.first_error < 0:  # the error lay after an unlabeled step that was cut
                continue
            if not pool:
                report.note("refine_no_target")
                continue
            chosen = pool[0] if len(pool) == 1 else random.Random(f"{seed}:{rec.id}").choice(pool)
            out.append(Refinement(rec, critique, chosen))
    return out
