"""Reader for OpenAI's GSM8K example model solutions (``example_model_solutions.jsonl``).

A row is one question with four real model solutions (``6b_finetuning``, ``6b_verification``,
``175b_finetuning``, ``175b_verification``), each ``{"solution", "is_correct"}``, and the
reference ``ground_truth``. Solutions are one step per line; the ``A: …`` line is the final
step and gives ``answer`` (``None`` when a solution was cut off before it: note
``no_final_answer``). Step labels are not given (``None``); the outcome is ``is_correct``.
The reference becomes an all-correct candidate with outcome 1 and ``is_reference=True``
(``include_reference=False`` leaves it out; it is still kept as every record's ``reference``).
Calculator annotations ``<<16-3=13>>`` are kept unless ``keep_calculator_annotations=False``.

A row yields one record per candidate key plus the reference; a missing or malformed candidate
is rejected alone. Ids: ``group_id = "gsm8k-{hash of the question}"`` (stable across files and
line orders, and equal for a repeated question), ``id = f"{group_id}#{key}"`` with ``key`` the
candidate key or ``ground_truth``.
"""

from __future__ import annotations

import re
from typing import Any

from spare_train.formats.answers import normalize_answer
from spare_train.formats.base import ReadContext, require, split_lines, text_hash, to_outcome
from spare_train.records import CORRECT, Prompt, StepRecord
from spare_train.report import DataError

CANDIDATE_KEYS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_A_LINE = re.compile(r"^A:\s*(.*)$")


def read(
    obj: dict[str, Any],
    ctx: ReadContext,
    *,
    candidate_keys: tuple[str, ...] = CANDIDATE_KEYS,
    include_reference: bool = True,
    keep_calculator_annotations: bool = True,
) -> list[StepRecord | DataError]:
    """One question row -> its model solutions and (by default) its reference."""
    question = require(obj, "question", str, ctx)
    group_id = f"gsm8k-{text_hash(question)}"
    prompt = Prompt(question=question.strip())

    def steps_of(text: str) -> list[str]:
        return split_lines(text if keep_calculator_annotations else _CALCULATOR.sub("", text))

    reference = steps_of(require(obj, "ground_truth", str, ctx, f"{group_id}#ground_truth"))
    out: list[StepRecord | DataError] = []
    for key in candidate_keys:
        rid = f"{group_id}#{key}"
        try:
            cand = require(obj, key, dict, ctx, rid)
            solution = require(cand, "solution", str, ctx, rid)
            if "is_correct" not in cand:
                raise ctx.error("missing_field", f"{key}.is_correct is missing", rid)
            outcome = to_outcome(cand["is_correct"], ctx, f"{key}.is_correct", rid)
        except DataError as e:
            out.append(e)
            continue
        steps = steps_of(solution)
        out.append(_record(rid, group_id, prompt, steps, [None] * len(steps), outcome, reference, ctx))
    if include_reference:
        rid = f"{group_id}#ground_truth"
        out.append(_record(rid, group_id, prompt, reference, [CORRECT] * len(reference), 1, reference, ctx))
        out[-1].is_reference = True
    return out


def _record(rid, group_id, prompt, steps, labels, outcome, reference, ctx: ReadContext) -> StepRecord:
    answer = None
    m = _A_LINE.match(steps[-1]) if steps else None
    if m:
        answer = normalize_answer(m.group(1))
    elif steps:
        ctx.note("no_final_answer")
    return StepRecord(
        id=rid, group_id=group_id, prompt=prompt, steps=steps, labels=labels, outcome=outcome,
        reference=reference or None, source=ctx.source, answer=answer,
    )  # fmt: skip
