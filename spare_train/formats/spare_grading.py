"""SPARE gradings: the annotator's JSON parsed, checked against the candidate's steps, turned into labels.

Split out of the reader, :mod:`spare_train.formats.spare` (which documents every rule). Nothing here places a
grade on a step it may not belong to: an entry that cannot be placed, a label that cannot be read
and grades that contradict each other are rejections; what is read differently from the official
code (``"2"`` for 2, ``"correct"`` for ``"CORRECT"``, a grading numbered from 0, a step nobody
graded, an empty grading) is returned as a *fix*, ``(kind, message)``, which the reader counts as a
repair once the whole candidate has passed every check.
"""

from __future__ import annotations

import json
import re
from typing import Any

import json_repair

from spare_train.formats.base import ReadContext
from spare_train.records import CORRECT, INCORRECT

#: the two labels a SPARE grading uses (matched exactly; other case or spacing is a repair)
LABELS = {"CORRECT": CORRECT, "INCORRECT": INCORRECT}

#: a repair to count once the whole candidate has passed every check: ``(kind, message)``
Fix = tuple[str, str]


def parse_grading(raw: Any, field: str, ctx: ReadContext, rid: str) -> list | None:
    """The grading entries, or ``None`` for an empty grading (null, "", [], "[]")."""
    if isinstance(raw, list) or raw is None:
        return raw or None
    if not isinstance(raw, str):
        raise ctx.error("grading_not_list", f"{field!r} must be a JSON list, got {type(raw).__name__}", rid)
    if not raw.strip():
        return None
    snippet = raw.strip()[:60]
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ctx.error("grading_not_list", f"{field!r} is nested too deeply", rid) from None
    except ValueError:
        value = _repair(raw)
        if not (isinstance(value, list) and value and all(isinstance(e, dict) for e in value)):
            raise ctx.error("grading_not_list", f"{field!r} is not JSON, and json-repair makes {_short(value)} of "
                                                f"it, not a list of grading objects: {snippet!r}", rid) from None  # fmt: skip
        ctx.repair("grading_json_repaired", "grading was not valid JSON; json-repair fixed its syntax", rid,
                   strict_ok=True)  # fmt: skip
        return value
    if value is None or isinstance(value, list):
        return value or None
    raise ctx.error("grading_not_list", f"{field!r} is not a JSON list: {snippet!r}", rid)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "…"


_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_TRAILING_COMMA = re.compile(r",\s*([\]}])")


def _repair(raw: str) -> Any:
    """Fix the usual slips (a code fence, trailing commas) cheaply; else ask ``json_repair``,
    which handles truncation and unquoted keys but costs ~1 ms a grading."""
    try:
        return json.loads(_TRAILING_COMMA.sub(r"\1", _FENCE.sub("", raw.strip())))
    except ValueError:
        return json_repair.loads(raw)


def _step_number(s: Any) -> int | None:
    """A ``student_step`` as an int: ints as they are; ``2.0`` and ``"2"`` read as 2; else ``None``."""
    if isinstance(s, bool):
        return None
    if isinstance(s, int):
        return s
    if isinstance(s, float) and s.is_integer():
        return int(s)
    if isinstance(s, str) and s.strip().isdigit() and s.strip().isascii():
        return int(s.strip())
    return None


def graded_steps(
    entries: list | None, n: int, ctx: ReadContext, rid: str, fixes: list[Fix]
) -> dict[int, tuple] | None:
    """0-based step -> ``(label or None, entry)``; ``None`` for an empty grading. Raises on anything
    that would put a grade on a step it may not belong to (see the module docstring)."""
    if entries is None:
        return None
    parsed: list[tuple[int, float | None, dict]] = []
    coerced, normalised = [], []
    for k, e in enumerate(entries, 1):
        if not isinstance(e, dict):
            raise ctx.error("bad_grading_entry", f"grading entry {k} is {type(e).__name__}, not an object", rid)
        step = _step_number(e.get("student_step"))
        if step is None:
            raise ctx.error("bad_grading_entry", f"grading entry {k}: student_step {e.get('student_step')!r} "
                                                 "is not a step number", rid)  # fmt: skip
        if type(e["student_step"]) is not int:
            coerced.append(e["student_step"])
        label = e.get("label")
        if label is not None:
            key = label.strip().upper() if isinstance(label, str) else None
            if key not in LABELS:
                raise ctx.error("unknown_label", f"grading entry {k} (step {step}): label {label!r} is not "
                                                 "CORRECT or INCORRECT", rid)  # fmt: skip
            if label != key:
                normalised.append(label)
            label = LABELS[key]
        parsed.append((step, label, e))
    if coerced:
        fixes.append(("student_step_coerced", f"student_step {', '.join(map(repr, coerced[:4]))} read as integer(s)"))
    if normalised:
        fixes.append(("label_normalised", f"label(s) {', '.join(map(repr, normalised[:4]))} read as CORRECT/INCORRECT"))
    numbers = [s for s, _, _ in parsed]
    if 0 in numbers and all(0 <= s < n for s in numbers):
        fixes.append(("grading_zero_based", "student_step numbered from 0: every entry moved to the next step"))
        parsed = [(s + 1, label, e) for s, label, e in parsed]
    outside = sorted({s for s, _, _ in parsed if not 1 <= s <= n})
    if outside:
        raise ctx.error("step_out_of_range", f"grading for step(s) {outside[:6]} of a candidate with {n} steps", rid)
    graded: dict[int, tuple] = {}
    for s, label, e in parsed:
        prev = graded.get(s - 1)
        if prev is not None and prev[0] is not None and label is not None and prev[0] != label:
            raise ctx.error("conflicting_grades", f"step {s} is graded both CORRECT and INCORRECT", rid)
        if prev is None or prev[0] is None:
            graded[s - 1] = (label, e)
    return graded


def step_labels(
    graded: dict[int, tuple] | None,
    n: int,
    outcome: int | None,
    missed_as_outcome: bool,
    last_from_outcome: bool,
    alignment_keys: tuple[str, ...],
    explanation_keys: tuple[str, ...],
    error_type_keys: tuple[str, ...],
    ctx: ReadContext,
    fixes: list[Fix],
) -> tuple[list, list | None, list | None, list | None]:
    outcome_last = last_from_outcome and outcome is not None
    if graded is None:
        fixes.append(("empty_grading", "empty grading: every step taken as correct"))
        labels: list[float | None] = [CORRECT] * n
        alignment = explanation = error_types = None
    else:
        missed = float(outcome) if missed_as_outcome and outcome is not None else INCORRECT
        labels, alignment, explanation, error_types = [], [], [], []
        for i in range(n):
            label, e = graded.get(i, (None, None))
            labels.append(missed if label is None else label)
            alignment.append(_step_numbers(_first(e, alignment_keys)) if e else [])
            explanation.append(_text(_first(e, explanation_keys)) if e else None)
            error_types.append(_strings(_first(e, error_type_keys)) if e else [])
        ungraded = [i + 1 for i in range(n) if graded.get(i, (None,))[0] is None and not (outcome_last and i == n - 1)]
        if ungraded:
            fixes.append(("ungraded_step", f"step(s) {ungraded[:8]} have no graded entry: labelled {missed:g}"))
        if outcome_last and graded.get(n - 1, (None,))[0] not in (None, float(outcome)):
            ctx.note("last_step_from_outcome")
    if outcome_last:
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
