"""What happened to every record: kept (perhaps repaired) or rejected, with where and why.

Every stage that can drop or repair a record (reading, validation, label policies, tokenisation)
writes into one :class:`Report`, so ``kept + rejected == read`` holds end to end and a user can
see exactly which input lines were lost. In strict mode the first problem raises
:class:`DataError` instead.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


class DataError(ValueError):
    """A problem with one input record; ``str()`` starts with ``file:line``."""

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


@dataclass
class Report:
    """Counts for one pass over the data.

    ``read`` counts candidate records (a line that cannot be parsed counts as one). ``kept``
    is derived: ``read - len(rejected)``. ``repaired`` counts repairs by kind (a record can be
    repaired several times and still kept). ``notes`` counts non-fatal events by kind (e.g.
    ``steps_truncated``).
    """

    strict: bool = False
    read: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    repaired: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)

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

    def repair(self, kind: str, where: str = "", message: str = "", n: int = 1) -> None:
        """Count a repair. Repairs never raise, even in strict mode: SPARE gradings are routinely
        slightly malformed JSON, and a strict run must still accept what json-repair fixes."""
        self.repaired[kind] += n

    def note(self, kind: str, n: int = 1) -> None:
        self.notes[kind] += n

    def merge(self, other: Report) -> None:
        self.read += other.read
        self.rejected.extend(other.rejected)
        self.repaired.update(other.repaired)
        self.notes.update(other.notes)

    def rejected_by_kind(self) -> Counter:
        return Counter(r.kind for r in self.rejected)

    def to_dict(self, max_rejections: int | None = None) -> dict[str, Any]:
        rej = self.rejected if max_rejections is None else self.rejected[:max_rejections]
        return {
            "read": self.read,
            "kept": self.kept,
            "rejected": len(self.rejected),
            "rejected_by_kind": dict(self.rejected_by_kind()),
            "repaired": dict(self.repaired),
            "notes": dict(self.notes),
            "rejections": [r.__dict__ for r in rej],
        }

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(**kw), indent=2, ensure_ascii=False)

    def summary(self, max_lines: int = 10) -> str:
        """A readable multi-line summary for the terminal."""
        lines = [f"read {self.read}  kept {self.kept}  rejected {len(self.rejected)}"]
        for kind, n in sorted(self.rejected_by_kind().items()):
            lines.append(f"  rejected  {kind:<28} {n}")
        for kind, n in sorted(self.repaired.items()):
            lines.append(f"  repaired  {kind:<28} {n}")
        for kind, n in sorted(self.notes.items()):
            lines.append(f"  note      {kind:<28} {n}")
        for r in self.rejected[:max_lines]:
            lines.append(f"  - {r}")
        if len(self.rejected) > max_lines:
            lines.append(f"  … {len(self.rejected) - max_lines} more rejections in the JSON report")
        return "\n".join(lines)
