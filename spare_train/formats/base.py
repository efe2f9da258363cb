"""What every reader shares: the per-row context, field accessors that raise :class:`DataError`,
the validation run on every record a reader returns, and the JSONL writer.

A reader is a function ``read(obj, ctx, *, option=default, ...) -> list[StepRecord | DataError]``:
``obj`` is one parsed row, ``ctx`` a :class:`ReadContext`. It raises ``DataError`` when the whole
row is unusable, and puts a ``DataError`` in its result for one bad candidate of a row that
holds several (the others are kept). Options are keyword-only with typed defaults, so
``read_records`` can reject unknown ones and a CLI can expose them from the signature.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spare_train.files import atomic_path
from spare_train.records import Source, StepRecord
from spare_train.report import DataError, Report


@dataclass
class ReadContext:
    """Where the current row came from, plus state shared by all rows of one ``read_records``.

    ``index`` is the 0-based position of the row within its file. ``state`` is scratch space
    for readers that number candidates per group or emit something once per group.
    """

    source: Source
    index: int
    report: Report
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return str(self.source)

    def error(self, kind: str, message: str, record_id: str | None = None) -> DataError:
        return DataError(kind, message, self.where, record_id)

    def repair(self, kind: str, message: str = "", record_id: str | None = None, *, strict_ok: bool = False) -> None:
        """Count a repair of this row (raises in strict mode unless ``strict_ok``: see :mod:`spare_train.report`)."""
        self.report.repair(kind, self.where, message, strict_ok=strict_ok, record_id=record_id)

    def note(self, kind: str) -> None:
        self.report.note(kind, where=self.where)

    def group_id(self, key: str, identity: Any) -> str:
        """``key`` as the group id of a question known by ``identity`` (its ids and text).

        Different questions must never share a group: when ``key`` was first used for another
        identity (a question id reused for another question text, ``7`` and ``"7"`` naming
        different questions, or a ``context_id/question_id`` join that collides), this question
        gets ``key~<hash of its identity>`` and the repair ``group_id_conflict`` is counted.
        """
        owners = self.state.setdefault("group_owners", {})
        first = owners.setdefault(key, (identity, self.where))
        if first[0] == identity:
            return key
        new = f"{key}~{text_hash(json.dumps(identity, default=str), 8)}"
        self.repair(
            "group_id_conflict",
            f"group {key!r} already holds a different question (first seen at {first[1]}); this one is grouped as {new!r}",
        )
        return new

    def position_in_group(self, group_id: str) -> int:
        """0-based count of earlier candidates of ``group_id`` in this read (input order)."""
        counts = self.state.setdefault("group_positions", {})
        k = counts.get(group_id, 0)
        counts[group_id] = k + 1
        return k

    def first_time(self, key: Any) -> bool:
        """True the first time ``key`` is seen in this read (then marks it as seen)."""
        seen = self.state.setdefault("seen_once", set())
        if key in seen:
            return False
        seen.add(key)
        return True


# --------------------------------------------------------------------------- field access

_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object", float: "a number"}


def _type_name(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def require(
    obj: dict, key: str, types: type | tuple[type, ...], ctx: ReadContext, record_id: str | None = None
) -> Any:
    """``obj[key]``; ``missing_field`` when absent or null, ``wrong_type`` when not ``types``."""
    value = obj.get(key)
    if value is None:
        raise ctx.error("missing_field", f"required field {key!r} is missing", record_id)
    if not isinstance(value, types) or isinstance(value, bool) and bool not in _as_tuple(types):
        raise ctx.error(
            "wrong_type", f"field {key!r} must be {_type_name(types)}, got {type(value).__name__}", record_id
        )
    return value


def optional(
    obj: dict,
    key: str,
    types: type | tuple[type, ...],
    ctx: ReadContext,
    default: Any = None,
    record_id: str | None = None,
) -> Any:
    """``obj[key]`` when present and not null, else ``default``; ``wrong_type`` when not ``types``."""
    if obj.get(key) is None:
        return default
    return require(obj, key, types, ctx, record_id)


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def to_label(value: Any, ctx: ReadContext, record_id: str | None = None, what: str = "label") -> float | None:
    """A step label as a float in [0, 1] (bools and ints accepted), ``None`` for unlabeled."""
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        x = float(value) if isinstance(value, float) or value in (0, 1) else math.nan  # no float(10**400)
        if math.isnan(x) or not 0.0 <= x <= 1.0:
            raise ctx.error("bad_label", f"{what} {value!r} is not in [0, 1]", record_id)
        return x
    raise ctx.error("bad_label", f"{what} {value!r} is not a number or bool", record_id)


def to_outcome(value: Any, ctx: ReadContext, key: str, record_id: str | None = None) -> int | None:
    """An outcome as 1/0 (accepts bools, 0/1 numbers and the strings "0"/"1"), ``None`` if null."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    if isinstance(value, (bool, int, float)) and value in (0, 1):
        return int(value)
    raise ctx.error("wrong_type", f"field {key!r} must be 0/1 or a bool, got {value!r}", record_id)


def text_hash(text: str, n: int = 12) -> str:
    """A short stable hash of ``text`` (for ids of records that carry none)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def split_lines(text: str) -> list[str]:
    """Non-empty lines of ``text``, stripped."""
    return [s for s in (line.strip() for line in text.splitlines()) if s]


# --------------------------------------------------------------------------- validation


def validate_record(rec: StepRecord, where: str) -> None:
    """The checks every reader's output must pass; raises ``DataError`` with the failing kind."""
    rid = rec.id if isinstance(rec.id, str) and rec.id else None

    def fail(kind: str, message: str) -> DataError:
        return DataError(kind, message, where, rid)

    if not isinstance(rec.id, str) or not rec.id:
        raise fail("missing_field", "record has no id")
    if not isinstance(rec.group_id, str) or not rec.group_id:
        raise fail("missing_field", "record has no group_id")
    if not isinstance(rec.prompt.question, str) or not rec.prompt.question.strip():
        raise fail("missing_field", "question is empty")
    if not isinstance(rec.steps, list) or not all(isinstance(s, str) for s in rec.steps):
        raise fail("wrong_type", "steps must be a list of strings")
    if not rec.steps:
        raise fail("no_steps", "candidate has no steps")
    if not any(s.strip() for s in rec.steps):
        raise fail("empty_candidate", f"all {len(rec.steps)} steps are empty")
    if len(rec.labels) != len(rec.steps):
        raise fail("label_count_mismatch", f"{len(rec.labels)} labels for {len(rec.steps)} steps")
    for i, x in enumerate(rec.labels):
        if x is None:
            continue
        if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x) or not 0.0 <= x <= 1.0:
            raise fail("bad_label", f"label {x!r} of step {i + 1} is not in [0, 1]")
    if rec.outcome not in (None, 0, 1) or isinstance(rec.outcome, float):
        raise fail("bad_label", f"outcome {rec.outcome!r} is not 0, 1 or None")
    for name in ("alignment", "explanation", "error_types"):
        per_step = getattr(rec, name)
        if per_step is not None and len(per_step) != len(rec.steps):
            raise fail("label_count_mismatch", f"{len(per_step)} {name} entries for {len(rec.steps)} steps")


# --------------------------------------------------------------------------- writing


def write_records_jsonl(records: Iterable[StepRecord], path: str | Path) -> int:
    """Write ``record.to_dict()`` one per line (UTF-8, not ASCII-escaped), in input order.

    Creates parent folders; the file appears only when complete (written under a temporary
    name, then renamed). Returns the number of records written.
    """
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec.to_dict(), ensure_ascii=False))
            f.write("\n")
            n += 1
    return n
