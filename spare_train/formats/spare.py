"""Reader for SPARE annotator output (UKPLab/arxiv2025-spare-prm): one graded candidate per row.

A row holds the candidate ``grade_ans`` with step markers ``[1] … [2] …``, the annotator's
``grading`` (a JSON list, usually as a string and often slightly malformed), the outcome ``em``,
the ``reference_ans``, the ``instruction``, ``question``, optional ``context`` and the ids
``context_id`` / ``question_id``. Field names are options (defaults below).

Steps. ``grade_ans`` is split on ``step_pattern`` (default ``\\n*\\[\\d+\\]\\s*``, the one the
official grading used). Text before the first marker is the record's ``preamble``, never a
step: the official code turns it into a step and so shifts every label by one. A candidate
with no marker at all is one step (as in the official code; counted as note ``no_step_markers``).
Empty steps (``[2]`` followed directly by ``[3]``) are kept so that labels stay aligned.

Labels, as the official ``prepare_step_tag_and_scores`` computes them by default:

* a grading entry that is not an object, or whose ``student_step`` is not an integer, is
  ignored; so is one whose ``label`` is not a string (the official training path drops it);
* ``label == "CORRECT"`` (exactly) is correct, any other string is incorrect;
* for a repeated ``student_step`` the last entry wins; entries for steps that do not exist
  are ignored;
* a step with no entry is incorrect (``missed_grading_as_outcome=True``: it takes the outcome);
* an empty grading (missing, null, ``""`` or ``[]``) means every step is correct: that is how
  the official code adds reference solutions;
* the last step's label is the outcome whenever the outcome is known
  (``last_step_from_outcome=False`` turns that off).

A grading string that ``json.loads`` rejects is repaired with ``json_repair`` (repair
``grading_json_repaired``); if the result is not a list the row is rejected
(``grading_not_list``). Per step, the winning entry's aligned reference steps, explanation and
error types go to ``alignment`` / ``explanation`` / ``error_types`` (the first key present of
``alignment_keys`` etc.; step numbers are parsed from ints, lists or strings such as "1, 2").

Ids. ``group_id`` is ``"{context_id}/{question_id}"`` when both ids are present (the pair the
official configs key on), ``question_id`` alone, ``"{context_id}/{hash of question}"``, or
``"q-{hash of question}"``. SPARE rows carry no candidate id, so ``id = f"{group_id}#{k}"``
with ``k`` the 0-based position of the row among the rows of its group, in input order
(files in the order read). With ``add_reference=True`` the reference solution becomes one
extra all-correct candidate per group: ``id = f"{group_id}#ref"``, ``is_reference=True``,
outcome 1 (markers split it when present, else one step per non-empty line).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

import json_repair

from spare_train.formats.answers import extract_answer
from spare_train.formats.base import ReadContext, optional, require, split_lines, text_hash, to_outcome
from spare_train.records import CORRECT, INCORRECT, Prompt, StepRecord
from spare_train.report import DataError

STEP_PATTERN = r"\n*\[\d+\]\s*"


def read(
    obj: dict[str, Any],
    ctx: ReadContext,
    *,
    response_field: str = "grade_ans",
    grading_field: str = "grading",
    outcome_field: str | None = "em",
    reference_field: str = "reference_ans",
    question_field: str = "question",
    instruction_field: str = "instruction",
    context_field: str = "context",
    question_id_field: str = "question_id",
    context_id_field: str = "context_id",
    step_pattern: str = STEP_PATTERN,
    missed_grading_as_outcome: bool = False,
    last_step_from_outcome: bool = True,
    add_reference: bool = False,
    alignment_keys: tuple[str, ...] = (
        "aligned_reference_steps",
        "reference_steps",
        "reference_step",
        "aligned_steps",
    ),
    explanation_keys: tuple[str, ...] = ("explanation", "reasoning", "justification"),
    error_type_keys: tuple[str, ...] = ("error_type", "error_types", "errors"),
) -> list[StepRecord | DataError]:
    """One SPARE row -> the graded candidate (and, with ``add_reference``, its group's reference)."""
    question = require(obj, question_field, str, ctx)
    prompt = Prompt(
        question=question,
        instruction=optional(obj, instruction_field, str, ctx, ""),
        context=optional(obj, context_field, str, ctx, ""),
    )
    qid, cid = obj.get(question_id_field), obj.get(context_id_field)
    if qid is not None and cid is not None:
        group_id = f"{cid}/{qid}"
    elif qid is not None:
        group_id = str(qid)
    elif cid is not None:
        group_id = f"{cid}/{text_hash(question, 8)}"
    else:
        group_id = f"q-{text_hash(question)}"
    rid = f"{group_id}#{ctx.position_in_group(group_id)}"
    pattern = _compile(step_pattern)

    ref_text = optional(obj, reference_field, str, ctx, "", rid)
    ref_preamble, reference = _split_reference(ref_text, pattern)
    extra = {k: v for k, v in ((question_id_field, qid), (context_id_field, cid)) if v is not None}

    out: list[StepRecord | DataError] = []
    try:
        outcome = None
        if outcome_field:
            if outcome_field not in obj:
                raise ctx.error("missing_field", f"required field {outcome_field!r} is missing", rid)
            outcome = to_outcome(obj[outcome_field], ctx, outcome_field, rid)
        response = require(obj, response_field, str, ctx, rid)
        if not response.strip():
            raise ctx.error("empty_candidate", f"{response_field!r} is empty", rid)
        preamble, steps = _split_marked(response, pattern)
        if not steps:
            ctx.note("no_step_markers")
            preamble, steps = "", [response.strip()]
        entries = _parse_grading(obj.get(grading_field), grading_field, ctx, rid)
        labels, alignment, explanation, error_types = _labels(
            entries,
            len(steps),
            outcome,
            missed_grading_as_outcome,
            last_step_from_outcome,
            alignment_keys,
            explanation_keys,
            error_type_keys,
        )
        out.append(StepRecord(
            id=rid, group_id=group_id, prompt=prompt, steps=steps, labels=labels, outcome=outcome,
            reference=reference or None, alignment=alignment, explanation=explanation,
            error_types=error_types, source=ctx.source, preamble=preamble,
            answer=extract_answer(steps[-1]), extra=dict(extra),
        ))  # fmt: skip
    except DataError as e:
        out.append(e)  # a bad candidate must not cost its group the reference below

    if add_reference:
        if not reference:
            ctx.note("no_reference")
        elif ctx.first_time(("spare_reference", group_id)):
            out.append(StepRecord(
                id=f"{group_id}#ref", group_id=group_id, prompt=prompt, steps=reference,
                labels=[CORRECT] * len(reference), outcome=1, reference=reference,
                source=ctx.source, preamble=ref_preamble, is_reference=True,
                answer=extract_answer(reference[-1]), extra=dict(extra),
            ))  # fmt: skip
    return out


@lru_cache(maxsize=8)
def _compile(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def _split_marked(text: str, pattern: re.Pattern) -> tuple[str, list[str]]:
    """``(preamble, steps)``; ``steps`` is empty when ``text`` has no marker."""
    parts = pattern.split(text)
    return parts[0].strip(), [p.strip() for p in parts[1:]]


def _split_reference(text: str, pattern: re.Pattern) -> tuple[str, list[str]]:
    if not text.strip():
        return "", []
    preamble, steps = _split_marked(text, pattern)
    return (preamble, steps) if steps else ("", split_lines(text))


def _parse_grading(raw: Any, field: str, ctx: ReadContext, rid: str) -> list | None:
    """The grading entries, or ``None`` for an empty grading (= every step correct)."""
    if raw is None or raw == "" or raw == []:
        return None
    if isinstance(raw, list):
        return raw
    if not isinstance(raw, str):
        raise ctx.error("grading_not_list", f"{field!r} must be a JSON list, got {type(raw).__name__}", rid)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = _repair(raw)
        if isinstance(value, list):
            ctx.repair("grading_json_repaired", "grading was not valid JSON; json-repair fixed it")
    if not isinstance(value, list):
        snippet = raw.strip()[:60]
        raise ctx.error(
            "grading_not_list", f"{field!r} is not a JSON list even after repair: {snippet!r}", rid
        )
    return value


_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_TRAILING_COMMA = re.compile(r",\s*([\]}])")


def _repair(raw: str) -> Any:
    """Fix the usual slips (a code fence, trailing commas) cheaply; else ask ``json_repair``,
    which handles truncation and unquoted keys but costs ~1 ms a grading."""
    try:
        return json.loads(_TRAILING_COMMA.sub(r"\1", _FENCE.sub("", raw.strip())))
    except json.JSONDecodeError:
        return json_repair.loads(raw)


def _labels(
    entries: list | None,
    n: int,
    outcome: int | None,
    missed_as_outcome: bool,
    last_from_outcome: bool,
    alignment_keys: tuple[str, ...],
    explanation_keys: tuple[str, ...],
    error_type_keys: tuple[str, ...],
) -> tuple[list, list | None, list | None, list | None]:
    if entries is None:
        labels: list[float | None] = [CORRECT] * n
        alignment = explanation = error_types = None
    else:
        graded: dict[int, dict] = {}
        for e in entries:
            if not isinstance(e, dict):
                continue
            s = e.get("student_step")
            if (
                isinstance(s, int)
                and not isinstance(s, bool)
                and isinstance(e.get("label"), str)
                and 1 <= s <= n
            ):
                graded[s - 1] = e  # last entry for a step wins
        missed = float(outcome) if missed_as_outcome and outcome is not None else INCORRECT
        labels, alignment, explanation, error_types = [], [], [], []
        for i in range(n):
            e = graded.get(i)
            if e is None:
                labels.append(missed)
                alignment.append([])
                explanation.append(None)
                error_types.append([])
            else:
                labels.append(CORRECT if e["label"] == "CORRECT" else INCORRECT)
                alignment.append(_step_numbers(_first(e, alignment_keys)))
                explanation.append(_text(_first(e, explanation_keys)))
                error_types.append(_strings(_first(e, error_type_keys)))
    if last_from_outcome and outcome is not None:
        labels[-1] = float(outcome)
    return labels, alignment, explanation, error_types


def _first(entry: dict, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if entry.get(k) is not None:
            return entry[k]
    return None


def _step_numbers(v: Any) -> list[int]:
    if type(v) is list and all(type(x) is int for x in v):
        return v
    if v is None or isinstance(v, bool):
        return []
    if isinstance(v, int):
        return [v]
    if isinstance(v, float):
        return [int(v)] if v.is_integer() else []
    if isinstance(v, str):
        return [int(x) for x in re.findall(r"\d+", v)]
    if isinstance(v, (list, tuple)):
        return [x for item in v for x in _step_numbers(item)]
    return []


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


_NO_ERROR = {"", "none", "null", "n/a", "na", "no error"}


def _strings(v: Any) -> list[str]:
    if v is None:
        return []
    items = v if isinstance(v, (list, tuple)) else [v]
    out = [str(x).strip() for x in items if x is not None]
    return [x for x in out if x.lower() not in _NO_ERROR]
