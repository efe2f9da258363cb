"""The one record type every reader produces and every later stage consumes.

A :class:`StepRecord` is one candidate solution to one question, split into steps, with one label
per step. Candidates of the same question share ``group_id``; that is what group-wise splits,
best-of-N evaluation and preference-pair building key on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

#: Label value for "this step is correct"; 0.0 is incorrect, values in between are soft labels.
CORRECT = 1.0
INCORRECT = 0.0


@dataclass
class Prompt:
    """The model input before the answer, kept in parts so a chat template can place them.

    ``instruction`` becomes the system message, ``context`` and ``question`` the user message.
    """

    question: str
    instruction: str = ""
    context: str = ""

    def user_text(self) -> str:
        """Context and question as one user message (context first, blank line between)."""
        return f"{self.context}\n\n{self.question}" if self.context else self.question


@dataclass
class Source:
    """Where a record came from: the file and the 1-based line (or row) number."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class StepRecord:
    """One annotated candidate solution.

    ``labels[i]`` belongs to ``steps[i]``: 1.0 correct, 0.0 incorrect, in between soft, ``None``
    unlabeled. ``outcome`` is whether the final answer is right (1/0) or unknown (``None``).
    ``alignment[i]`` lists the 1-based reference steps that step ``i`` was aligned to.
    ``preamble`` is response text before the first step marker: kept, never a step.
    ``answer`` is the candidate's extracted final answer when the reader knows it (used for
    majority and PRM-weighted voting).
    ``extra`` holds reader-specific fields later stages may use (e.g. a second label source for
    the consensus filter, under ``extra["mc_labels"]``).
    """

    id: str
    group_id: str
    prompt: Prompt
    steps: list[str]
    labels: list[float | None]
    outcome: int | None = None
    reference: list[str] | None = None
    alignment: list[list[int]] | None = None
    explanation: list[str | None] | None = None
    error_types: list[list[str]] | None = None
    source: Source | None = None
    preamble: str = ""
    is_reference: bool = False
    answer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the normalised format ``data convert`` writes)."""
        d = asdict(self)
        d["source"] = str(self.source) if self.source is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepRecord:
        """Inverse of :meth:`to_dict`; ``source`` may be ``"file:line"``, a dict or absent."""
        d = dict(d)
        prompt = d.pop("prompt")
        if isinstance(prompt, str):
            prompt = Prompt(question=prompt)
        elif isinstance(prompt, dict):
            prompt = Prompt(**prompt)
        src = d.pop("source", None)
        if isinstance(src, str) and ":" in src:
            file, _, line = src.rpartition(":")
            src = Source(file, int(line)) if line.isdigit() else None
        elif isinstance(src, dict):
            src = Source(**src)
        elif not isinstance(src, Source):
            src = None
        known = {f for f in cls.__dataclass_fields__}
        extra = dict(d.pop("extra", None) or {})
        for k in list(d):
            if k not in known:
                extra[k] = d.pop(k)
        return cls(prompt=prompt, source=src, extra=extra, **d)

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    def first_error(self, threshold: float = 0.5) -> int:
        """0-based index of the first step labelled below ``threshold``, or -1 if none.

        Unlabeled steps (``None``) are skipped: they are neither correct nor an error.
        """
        for i, label in enumerate(self.labels):
            if label is not None and not math.isnan(label) and label < threshold:
                return i
        return -1

    def mean_label(self) -> float:
        """Mean of the known step labels (NaN when no step is labeled)."""
        known = [x for x in self.labels if x is not None and not math.isnan(x)]
        return sum(known) / len(known) if known else math.nan
