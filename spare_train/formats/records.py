"""Reader for spare-train's own normalised records: what ``spare-train data convert`` writes.

A row is :meth:`StepRecord.to_dict` (``id``, ``group_id``, ``prompt``, ``steps``, ``labels``,
``outcome`` and the optional fields), so every command that reads data takes converted output
back with ``--format records``. Nothing is re-derived: ids, groups, labels and references are
read as written and checked like any reader's output. ``source`` becomes the line of the
converted file (where a problem would be found); the original ``file:line`` is kept in
``extra["converted_from"]``. A ``group_id`` that names two different prompts is disambiguated
as in every reader (repair ``group_id_conflict``).
"""

from __future__ import annotations

from typing import Any

from spare_train.formats.base import ReadContext, require
from spare_train.records import StepRecord
from spare_train.report import DataError

_OPTIONAL: dict[str, Any] = {
    "outcome": int, "reference": list, "alignment": list, "explanation": list, "error_types": list,
    "preamble": str, "is_reference": bool, "answer": str, "extra": dict,
}  # fmt: skip


def read(obj: dict[str, Any], ctx: ReadContext) -> list[StepRecord | DataError]:
    """One normalised record row -> that record."""
    rid = require(obj, "id", str, ctx)
    require(obj, "group_id", str, ctx, rid)
    prompt = require(obj, "prompt", (str, dict), ctx, rid)
    if isinstance(prompt, dict):
        unknown = set(prompt) - {"question", "instruction", "context"}
        if unknown or not all(isinstance(v, str) for v in prompt.values()):
            raise ctx.error("wrong_type", "prompt must hold the strings question, instruction, context", rid)
    for key in ("steps", "labels"):
        require(obj, key, list, ctx, rid)
    for key, types in _OPTIONAL.items():
        value = obj.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool) is not (types is bool)):
            raise ctx.error("wrong_type", f"field {key!r} has the wrong type ({type(obj[key]).__name__})", rid)
    row = dict(obj)
    original = row.pop("source", None)
    rec = StepRecord.from_dict(row)
    if original is not None:
        rec.extra.setdefault("converted_from", original)
    rec.source = ctx.source
    rec.group_id = ctx.group_id(rec.group_id, (rec.prompt.instruction, rec.prompt.context, rec.prompt.question))
    return [rec]
