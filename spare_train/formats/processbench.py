"""Reader for ProcessBench (``Qwen/ProcessBench``): the first wrong step of each solution, by experts.

A row is ``{"id", "generator", "problem", "steps": [...], "final_answer_correct", "label"}``;
``label`` is the 0-based index of the earliest wrong step, or -1 when every step is right.
Steps before it are correct, that step is incorrect, and the steps after it are unlabeled
(``None``) by default: experts stopped at the first error, so nothing is known about them.
``after_error="incorrect"`` labels them 0.0 instead (the usual "first error poisons the rest"
convention). The outcome is ``final_answer_correct`` when present.

Ids: the row's ``id``; ``group_id = "pb-{hash of the problem}"``.
"""

from __future__ import annotations

from typing import Any, Literal

from spare_train.formats.answers import extract_answer
from spare_train.formats.base import ReadContext, require, text_hash, to_outcome
from spare_train.records import CORRECT, INCORRECT, Prompt, StepRecord
from spare_train.report import DataError


def read(
    obj: dict[str, Any],
    ctx: ReadContext,
    *,
    after_error: Literal["none", "incorrect"] = "none",
) -> list[StepRecord | DataError]:
    """One ProcessBench row -> one record."""
    rid = str(require(obj, "id", (str, int), ctx))
    problem = require(obj, "problem", str, ctx, rid)
    raw_steps = require(obj, "steps", list, ctx, rid)
    first_error = require(obj, "label", int, ctx, rid)
    if not all(isinstance(s, str) for s in raw_steps):
        raise ctx.error("wrong_type", "every element of 'steps' must be a string", rid)
    steps = [s.strip() for s in raw_steps]
    if not -1 <= first_error < len(steps):
        raise ctx.error("bad_label", f"label {first_error} is not -1 or a step index below {len(steps)}", rid)
    after = None if after_error == "none" else INCORRECT
    if first_error == -1:
        labels: list[float | None] = [CORRECT] * len(steps)
    else:
        labels = [CORRECT] * first_error + [INCORRECT] + [after] * (len(steps) - first_error - 1)
    extra = {"generator": obj["generator"]} if obj.get("generator") is not None else {}
    return [
        StepRecord(
            id=rid,
            group_id=f"pb-{text_hash(problem)}",
            prompt=Prompt(question=problem),
            steps=steps,
            labels=labels,
            outcome=to_outcome(obj.get("final_answer_correct"), ctx, "final_answer_correct", rid),
            source=ctx.source,
            answer=extract_answer(steps[-1]) if steps else None,
            extra=extra,
        )
    ]
