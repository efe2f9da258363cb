"""Reader for plain critique files: a solution's steps with a critique text and a verdict per step.

For critic data from other sources (e.g. MathCritique-style releases converted to one row per
solution). A row::

    {"question": "...", "steps": ["...", "..."], "critiques": ["why step 1 is right", null],
     "verdicts": ["correct", "incorrect"]}

* ``question`` (string), ``steps`` (list of strings): required.
* ``verdicts``: one per step: ``"correct"`` / ``"incorrect"`` (any case), ``true`` / ``false``,
  ``1`` / ``0``, or ``null`` for an unlabeled step. Required.
* ``critiques``: one explanation per step (string or ``null``); optional. A step without one
  gets a templated explanation when critique examples are built (counted in the report).
* Optional: ``id``; ``group_id`` (else ``question_id``, else ``"q-{hash of the question}"``);
  ``instruction`` (the system message); ``context``; ``reference`` (the reference solution, a
  list of steps or one string split into lines); ``outcome`` (0/1 or bool); ``answer`` (else
  extracted from the last step). Without ``id``, ``id = f"{group_id}#{k}"``, ``k`` the row's
  position among its group's rows in input order.

Field names are options (defaults above).
"""

from __future__ import annotations

from typing import Any

from spare_train.formats.answers import extract_answer
from spare_train.formats.base import ReadContext, optional, require, split_lines, text_hash, to_outcome
from spare_train.records import CORRECT, INCORRECT, Prompt, StepRecord
from spare_train.report import DataError

_VERDICTS = {"correct": CORRECT, "incorrect": INCORRECT, "true": CORRECT, "false": INCORRECT}


def read(
    obj: dict[str, Any],
    ctx: ReadContext,
    *,
    question_field: str = "question",
    steps_field: str = "steps",
    critiques_field: str = "critiques",
    verdicts_field: str = "verdicts",
    reference_field: str = "reference",
) -> list[StepRecord | DataError]:
    """One critique row -> one record (labels from the verdicts, explanations from the critiques)."""
    given_id = optional(obj, "id", (str, int), ctx)
    rid = str(given_id) if given_id is not None else None
    question = require(obj, question_field, str, ctx, rid)
    steps = require(obj, steps_field, list, ctx, rid)
    if not all(isinstance(s, str) for s in steps):
        raise ctx.error("wrong_type", f"{steps_field!r} must be a list of strings", rid)
    verdicts = require(obj, verdicts_field, list, ctx, rid)
    if len(verdicts) != len(steps):
        raise ctx.error("label_count_mismatch", f"{len(verdicts)} verdicts for {len(steps)} steps", rid)
    critiques = optional(obj, critiques_field, list, ctx, [None] * len(steps), rid)
    if len(critiques) != len(steps):
        raise ctx.error("label_count_mismatch", f"{len(critiques)} critiques for {len(steps)} steps", rid)
    if not all(c is None or isinstance(c, str) for c in critiques):
        raise ctx.error("wrong_type", f"{critiques_field!r} must hold strings or nulls", rid)
    group_id = optional(obj, "group_id", (str, int), ctx, None, rid)
    if group_id is None:
        group_id = optional(obj, "question_id", (str, int), ctx, None, rid)
    group_id = str(group_id) if group_id is not None else f"q-{text_hash(question)}"
    if rid is None:
        rid = f"{group_id}#{ctx.position_in_group(group_id)}"
    reference = obj.get(reference_field)
    if isinstance(reference, str):
        reference = split_lines(reference)
    elif reference is not None and not (isinstance(reference, list) and all(isinstance(s, str) for s in reference)):
        raise ctx.error("wrong_type", f"{reference_field!r} must be a string or a list of strings", rid)
    answer = optional(obj, "answer", str, ctx, None, rid)
    steps = [s.strip() for s in steps]
    return [
        StepRecord(
            id=rid,
            group_id=group_id,
            prompt=Prompt(question, optional(obj, "instruction", str, ctx, "", rid), optional(obj, "context", str, ctx, "", rid)),
            steps=steps,
            labels=[_verdict(v, i, ctx, rid) for i, v in enumerate(verdicts)],
            outcome=to_outcome(obj.get("outcome"), ctx, "outcome", rid),
            reference=reference or None,
            explanation=list(critiques),
            source=ctx.source,
            answer=answer if answer is not None else (extract_answer(steps[-1]) if steps else None),
        )
    ]


def _verdict(value: Any, i: int, ctx: ReadContext, rid: str | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return CORRECT if value else INCORRECT
    if isinstance(value, int) and value in (0, 1):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in _VERDICTS:
        return _VERDICTS[value.strip().lower()]
    raise ctx.error("bad_label", f"verdict {value!r} of step {i + 1} is not correct/incorrect, a bool, 0/1 or null", rid)
