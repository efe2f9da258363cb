"""Reader for SPARE annotator output (UKPLab/arxiv2025-spare-prm): one graded candidate per row.

A row holds the candidate ``grade_ans`` with step markers ``[1] … [2] …``, the annotator's
``grading`` (a JSON list, usually as a string and often slightly malformed), the outcome ``em``,
the ``reference_ans``, the ``instruction``, ``question``, optional ``context`` and the ids
``context_id`` / ``question_id``. Field names are options (defaults below).

Nothing here changes a label without saying so: every rule below that makes a label the
grading did not state, or reads a grading the official code would read differently, is a
*repair* counted with its ``file:line`` (and refused by ``--strict``), and whatever cannot be
read unambiguously is a *rejection*. docs/data.md has the full table.

Steps. ``grade_ans`` is split on ``step_pattern`` (default ``\\n*\\[\\d+\\]\\s*``, the one the
official grading used). Text before the first marker is the record's ``preamble``, never a
step: the official code turns it into a step and so shifts every label by one. A candidate
with no marker at all is one step (note ``no_step_markers``). Empty steps (``[2]`` followed
directly by ``[3]``) are kept so that labels stay aligned. The markers must be numbered
1, 2, … in order; when they are not, but the markers that begin a line are, the others are
references inside a step's text and stay text (repair ``step_marker_in_text``); otherwise the
row is rejected (``bad_step_markers``: markers out of order or repeated).

Grading. A string is parsed with ``json.loads``; when that fails, with ``json_repair``
(repair ``grading_json_repaired``, accepted by ``--strict``: it fixes syntax, and anything it
loses shows up as ungraded steps below). A repair must give a non-empty list of objects, else
the row is rejected (``grading_not_list``: json-repair turns prose such as
``"[1] correct [2] wrong"`` into ``[2]``). A missing grading field is rejected
(``missing_field``); an empty one (null, ``""``, ``[]`` or ``"[]"``, one rule) means every step
is correct, as in the official code's reference rows (repair ``empty_grading``).

Entries. Each must be an object with a ``student_step`` (else ``bad_grading_entry``);
``"2"`` or ``2.0`` are read as 2 (repair ``student_step_coerced``). A grading numbered from 0
(every step number below the step count) is shifted by one (repair ``grading_zero_based``);
any other step number outside 1..n is rejected (``step_out_of_range``), and two entries giving
one step different labels are rejected (``conflicting_grades``). ``label`` ``"CORRECT"`` /
``"INCORRECT"`` are read as they are; other case or surrounding space (``"correct"``,
``" CORRECT"``) is repair ``label_normalised``; any other label is rejected (``unknown_label``).
An entry without a label (a truncated grading) leaves its step ungraded.

Labels. A step without a graded entry is incorrect (``missed_grading_as_outcome=True``: it
takes the outcome), counted as repair ``ungraded_step``; the last step's label is the outcome
whenever the outcome is known (``last_step_from_outcome=False`` turns that off; note
``last_step_from_outcome`` when it overrides a grade). Per step, the entry's aligned reference
steps, explanation and error types go to ``alignment`` / ``explanation`` / ``error_types``
(the first key present of ``alignment_keys`` etc.; step numbers are parsed from ints, lists or
strings such as "1, 2").

Ids. The group key is ``"{context_id}/{question_id}"`` when both ids are present (the pair the
official configs key on), ``question_id`` alone, ``"{context_id}/{hash of question}"``, or
``"q-{hash of question}"``; ids must be strings or integers. A key that already names a
different question (another question text, or ``context_id``/``question_id`` pairs whose join
collides) becomes ``key~<hash>`` (repair ``group_id_conflict``). SPARE rows carry no candidate
id, so ``id = f"{group_id}#{k}"`` with ``k`` the 0-based position of the row among the rows of
its group, in input order (files in the order read). With ``add_reference=True`` the reference
solution becomes one extra all-correct candidate per group: ``id = f"{group_id}#ref"``,
``is_reference=True``, outcome 1 (markers split it when present, else one step per non-empty
line).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from spare_train.formats.answers import extract_answer
from spare_train.formats.base import ReadContext, optional, require, split_lines, text_hash, to_outcome
from spare_train.formats.spare_grading import Fix, graded_steps, parse_grading, step_labels
from spare_train.records import CORRECT, Prompt, StepRecord
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
    qid = optional(obj, question_id_field, (str, int), ctx)
    cid = optional(obj, context_id_field, (str, int), ctx)
    if qid is not None and cid is not None:
        key = f"{cid}/{qid}"
    elif qid is not None:
        key = str(qid)
    elif cid is not None:
        key = f"{cid}/{text_hash(question, 8)}"
    else:
        key = f"q-{text_hash(question)}"
    identity = [None if cid is None else str(cid), None if qid is None else str(qid),
                " ".join(prompt.context.split()), " ".join(question.split())]  # fmt: skip
    group_id = ctx.group_id(key, identity)
    rid = f"{group_id}#{ctx.position_in_group(group_id)}"
    pattern = _compile(step_pattern)

    ref_text = optional(obj, reference_field, str, ctx, "", rid)
    cached = ctx.state.get("spare_last_reference")  # rows of a group repeat their reference
    if cached is None or cached[0] != (ref_text, step_pattern):
        try:
            cached = ((ref_text, step_pattern), _split_reference(ref_text, pattern, ctx, f"{group_id}#ref"), None)
        except DataError as e:
            cached = ((ref_text, step_pattern), ("", [], []), e)
        ctx.state["spare_last_reference"] = cached
    (ref_preamble, reference, ref_fixes), ref_error = cached[1], cached[2]
    reference = list(reference)
    if ref_error is not None:
        ref_error = DataError(ref_error.kind, ref_error.message, ctx.where, f"{group_id}#ref")
        ctx.note("bad_reference_markers")
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
        preamble, steps, fixes = split_steps(response, pattern, ctx, rid)
        if not steps:
            ctx.note("no_step_markers")
            preamble, steps = "", [response.strip()]
        if grading_field not in obj:
            raise ctx.error("missing_field", f"required field {grading_field!r} is missing", rid)
        entries = parse_grading(obj[grading_field], grading_field, ctx, rid)
        graded = graded_steps(entries, len(steps), ctx, rid, fixes)
        labels, alignment, explanation, error_types = step_labels(
            graded, len(steps), outcome, missed_grading_as_outcome, last_step_from_outcome,
            alignment_keys, explanation_keys, error_type_keys, ctx, fixes,
        )  # fmt: skip
        for kind, message in fixes:  # counted only for a candidate that passed every check
            ctx.repair(kind, message, rid)
        out.append(StepRecord(
            id=rid, group_id=group_id, prompt=prompt, steps=steps, labels=labels, outcome=outcome,
            reference=reference or None, alignment=alignment, explanation=explanation,
            error_types=error_types, source=ctx.source, preamble=preamble,
            answer=extract_answer(steps[-1]), extra=dict(extra),
        ))  # fmt: skip
    except DataError as e:
        out.append(e)  # a bad candidate must not cost its group the reference below

    if add_reference and ctx.first_time(("spare_reference", group_id)):
        if ref_error is not None:
            out.append(ref_error)
        elif not reference:
            ctx.note("no_reference")
        else:
            try:
                for kind, message in ref_fixes:
                    ctx.repair(kind, message, f"{group_id}#ref")
            except DataError as e:  # strict
                out.append(e)
                return out
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


_DIGITS = re.compile(r"\d+")
_IN_ORDER = [str(i) for i in range(1, 1000)]


def _marker_number(marker: str) -> int | None:
    m = _DIGITS.search(marker)
    return int(m.group()) if m else None


def _starts_line(text: str, m: re.Match) -> bool:
    """Whether marker ``m`` is the first thing on its line (not a reference inside a step)."""
    pos = m.start() + len(m.group()) - len(m.group().lstrip())
    return not text[text.rfind("\n", 0, pos) + 1 : pos].strip()


def split_steps(text: str, pattern: re.Pattern, ctx: ReadContext, rid: str) -> tuple[str, list[str], list[Fix]]:
    """``(preamble, steps, fixes)`` of a marked solution; ``steps`` is empty when ``text`` has no marker.

    Markers must be numbered 1, 2, … in order. If they are not, but the markers that start a line
    are, the others are text (a fix ``step_marker_in_text``); otherwise ``bad_step_markers``.
    """
    if pattern.groups == 0:  # fast path: markers numbered 1..n, checked and split in C
        found = pattern.findall(text)
        if not found:
            return "", [], []
        if len(found) < len(_IN_ORDER) and _DIGITS.findall("".join(found)) == _IN_ORDER[: len(found)]:
            parts = pattern.split(text)
            return parts[0].strip(), [p.strip() for p in parts[1:]], []
    markers = list(pattern.finditer(text))
    if not markers:
        return "", [], []
    fixes: list[Fix] = []
    numbers = [_marker_number(m.group()) for m in markers]
    if None not in numbers and numbers != list(range(1, len(numbers) + 1)):
        kept = [m for m in markers if _starts_line(text, m)]
        if not kept or [_marker_number(m.group()) for m in kept] != list(range(1, len(kept) + 1)):
            shown = ", ".join(f"[{n}]" for n in numbers[:12]) + (", …" if len(numbers) > 12 else "")
            raise ctx.error("bad_step_markers", f"step markers {shown} are not numbered 1, 2, … in order", rid)
        inside = [f"[{_marker_number(m.group())}]" for m in markers if m not in kept]
        fixes.append(("step_marker_in_text", f"marker(s) {', '.join(inside[:6])} inside a step's text kept as text"))
        markers = kept
    ends = [m.start() for m in markers[1:]] + [len(text)]
    return text[: markers[0].start()].strip(), [text[m.end() : e].strip() for m, e in zip(markers, ends)], fixes


def _split_reference(text: str, pattern: re.Pattern, ctx: ReadContext, rid: str) -> tuple[str, list[str], list[Fix]]:
    if not text.strip():
        return "", [], []
    preamble, steps, fixes = split_steps(text, pattern, ctx, rid)
    return (preamble, steps, fixes) if steps else ("", split_lines(text), [])
