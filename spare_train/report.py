"""What happened to every record: kept (perhaps repaired) or rejected, with where and why.

Every stage that can drop or repair a record (reading, validation, label policies, tokenisation)
writes into one :class:`Report`, so ``kept + rejected == read`` holds end to end and a user can
see exactly which input lines were lost or changed. In strict mode the first problem raises
:class:`DataError` instead: a rejection, and any repair that could change what is learned (a
label, a step boundary, a group). Only repairs declared ``strict_ok`` (text and syntax fixes that
leave every label where it was, e.g. non-UTF-8 bytes or a grading's JSON syntax) pass a strict run.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: how many ``file:line`` locations a report keeps per repair or note kind (the counts are exact)
MAX_LOCATIONS = 20


class DataError(ValueError):
    """A problem with input data (a record, a file, a checkpoint or a model folder); ``str()``
    starts with ``where`` (``file:line`` for a record)."""

    def __init__(self, kind: str, message: str, where: str = "", record_id: str | None = None):
        self.kind = kind
        self.message = message
        self.where = where
        self.record_id = record_id
        prefix = f"{where}: " if where else ""
        rid = f" [id={record_id}]" if record_id else ""
        super().__init__(f"{prefix}{kind}: {message}{rid}")


@dataclass
class Rejection:
    """One record that was dropped: ``where`` is ``file:line``."""

    where: str
    record_id: str | None
    kind: str
    reason: str
    stage: str = "read"

    def __str__(self) -> str:
        rid = f" [id={self.record_id}]" if self.record_id else ""
        return f"{self.where}{rid}: {self.kind}: {self.reason}"


def _locate(locations: dict[str, list[str]], kind: str, where: str | list[str]) -> None:
    kept = locations.setdefault(kind, [])
    for w in [where] if isinstance(where, str) else where:
        if w and len(kept) < MAX_LOCATIONS:
            kept.append(w)


@dataclass
class Report:
    """Counts for one pass over the data.

    ``read`` counts candidate records (a line that cannot be parsed counts as one). ``kept``
    is derived: ``read - len(rejected)``. ``repaired`` counts repairs by kind (a record can be
    repaired several times and still kept). ``notes`` counts non-fatal events by kind (e.g.
    ``steps_truncated``). ``repaired_at`` / ``noted_at`` keep the first :data:`MAX_LOCATIONS`
    ``file:line`` of each kind; ``strict_ok`` names the repair kinds a strict run accepts.
    """

    strict: bool = False
    read: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    repaired: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    repaired_at: dict[str, list[str]] = field(default_factory=dict)
    noted_at: dict[str, list[str]] = field(default_factory=dict)
    strict_ok: set[str] = field(default_factory=set)

    @property
    def kept(self) -> int:
        return self.read - len(self.rejected)

    def count_read(self, n: int = 1) -> None:
        self.read += n

    def reject(self, error: DataError, stage: str = "read") -> None:
        """Record a rejection, or raise it in strict mode."""
        if self.strict:
            raise error
        self.rejected.append(Rejection(error.where, error.record_id, error.kind, error.message, stage))

    def repair(
        self,
        kind: str,
        where: str = "",
        message: str = "",
        n: int = 1,
        *,
        strict_ok: bool = False,
        record_id: str | None = None,
    ) -> None:
        """Count a repair at ``where``. In strict mode a repair raises :class:`DataError` unless
        ``strict_ok``: only fixes that cannot move or change a label may pass a strict run."""
        if strict_ok:
            self.strict_ok.add(kind)
        elif self.strict:
            raise DataError(kind, f"{message or 'repaired'} (--strict accepts no repair that can change labels)",
                            where, record_id)  # fmt: skip
        self.repaired[kind] += n
        _locate(self.repaired_at, kind, where)

    def note(self, kind: str, n: int = 1, where: str = "") -> None:
        self.notes[kind] += n
        _locate(self.noted_at, kind, where)

    def merge(self, other: Report) -> None:
        """Add ``other``'s counts; in strict mode its first rejection or label-changing repair raises."""
        if self.strict:
            for r in other.rejected:
                raise DataError(r.kind, r.reason, r.where, r.record_id)
            for kind in other.repaired:
                if kind not in other.strict_ok:
                    where = (other.repaired_at.get(kind) or [""])[0]
                    self.repair(kind, where, f"{other.repaired[kind]} repair(s) {kind}")
        self.read += other.read
        self.rejected.extend(other.rejected)
        self.repaired.update(other.repaired)
        self.notes.update(other.notes)
        for kind, where in other.repaired_at.items():
            _locate(self.repaired_at, kind, where)
        for kind, where in other.noted_at.items():
            _locate(self.noted_at, kind, where)
        self.strict_ok |= other.strict_ok

    def rejected_by_kind(self) -> Counter:
        return Counter(r.kind for r in self.rejected)

    def check_kept(self, what: str = "the input") -> None:
        """Raise ``DataError`` (kind ``nothing_kept``) when no record was kept: a run on nothing
        must fail, not report success."""
        if self.kept == 0:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.rejected_by_kind().items())) or "none"
            raise DataError("nothing_kept", f"no record of {what} was kept: read {self.read}, rejected "
                                            f"{len(self.rejected)} ({kinds}); see the report for each file:line")  # fmt: skip

    def to_dict(self, max_rejections: int | None = None) -> dict[str, Any]:
        rej = self.rejected if max_rejections is None else self.rejected[:max_rejections]
        return {
            "read": self.read,
            "kept": self.kept,
            "rejected": len(self.rejected),
            "rejected_by_kind": dict(self.rejected_by_kind()),
            "repaired": dict(self.repaired),
            "repaired_at": {k: list(v) for k, v in self.repaired_at.items()},
            "repairs_strict_ok": sorted(self.strict_ok),
            "notes": dict(self.notes),
            "noted_at": {k: list(v) for k, v in self.noted_at.items()},
            "rejections": [r.__dict__ for r in rej],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        """Inverse of :meth:`to_dict` (the rejections it kept); used to replay cached events
        (also those of caches written before repairs had locations: ``rejected`` as a list)."""
        rejections = d.get("rejections", d.get("rejected") if isinstance(d.get("rejected"), list) else [])
        return cls(
            read=d.get("read", 0),
            rejected=[Rejection(**r) for r in rejections],
            repaired=Counter(d.get("repaired", {})),
            notes=Counter(d.get("notes", {})),
            repaired_at={k: list(v) for k, v in d.get("repaired_at", {}).items()},
            noted_at={k: list(v) for k, v in d.get("noted_at", {}).items()},
            strict_ok=set(d.get("repairs_strict_ok", ["tag_in_text"])),  # older caches: their one repair kind
        )

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(**kw), indent=2, ensure_ascii=False)

    def summary(self, max_lines: int = 10) -> str:
        """A readable multi-line summary for the terminal (the first location of each repair)."""
        lines = [f"read {self.read}  kept {self.kept}  rejected {len(self.rejected)}"]
        for kind, n in sorted(self.rejected_by_kind().items()):
            lines.append(f"  rejected  {kind:<28} {n}")
        for kind, n in sorted(self.repaired.items()):
            at = self.repaired_at.get(kind)
            lines.append(f"  repaired  {kind:<28} {n}" + (f"  (first at {at[0]})" if at else ""))
        for kind, n in sorted(self.notes.items()):
            at = self.noted_at.get(kind)
            shown = ", ".join(at[:3]) + (", …" if len(at) > 3 or n > len(at) else "") if at else ""
            lines.append(f"  note      {kind:<28} {n}" + (f"  ({shown})" if shown else ""))
        for r in self.rejected[:max_lines]:
            lines.append(f"  - {r}")
        if len(self.rejected) > max_lines:
            lines.append(f"  … {len(self.rejected) - max_lines} more rejections in the JSON report")
        return "\n".join(lines)
