"""The one record type every reader produces and every later stage consumes.

A :class:`StepRecord` is one candidate solution to one question, split into steps, with one label
per step. Candidates of the same question share ``group_id``; that is what group-wise splits,
best-of-N evaluation and preference-pair building key on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

#: Label value for "this step is correct"; 0.0 is incorrect, values in between are soft labels.
CORRECT = 1.0
INCORRECT = 0.0
#: The "unlabeled" marker in tokenised examples and batches (records use ``None``). Every loss and
#: metric ignores it; NaN is treated the same way, so a float cast can never turn it into a label.
IGNORE = -100.0
#: Step-score (or step-label) aggregations: best-of-N, weighted voting, RFT filtering, ``score``.
AGGREGATES: tuple[str, ...] = ("min", "prod", "last", "mean")

T = TypeVar("T")


def is_label(x: float | None) -> bool:
    """Whether ``x`` is a step label (not ``None``, NaN or :data:`IGNORE`)."""
    return x is not None and not math.isnan(x) and x != IGNORE


def first_error(labels: Sequence[float | None], threshold: float = 0.5) -> int:
    """0-based index of the first step labelled below ``threshold``, or -1 if none.

    Unlabeled steps (``None``, NaN, :data:`IGNORE`) are skipped: neither correct nor an error.
    The tensor twin is :func:`spare_train.labels.up_to_first_error`.
    """
    for i, label in enumerate(labels):
        if is_label(label) and label < threshold:
            return i
    return -1


def aggregate(values: Sequence[float], how: str) -> float:
    """One solution score from its step scores (or labels): ``min``, ``prod``, ``last`` or ``mean``.

    ``nan`` when there is nothing to aggregate; a NaN value makes the result NaN (a broken score
    must never pass as a low or high one).
    """
    if how not in AGGREGATES:
        raise ValueError(f"unknown aggregation {how!r}; expected one of {AGGREGATES}")
    if len(values) == 0:
        return math.nan
    if any(math.isnan(v) for v in values):
        return math.nan
    if how == "min":
        return float(min(values))
    if how == "prod":
        return float(math.prod(values))
    if how == "last":
        return float(values[-1])
    return float(sum(values) / len(values))


def group_by(items: Iterable[T], key: Callable[[T], Hashable]) -> dict[Hashable, list[T]]:
    """Items by ``key``, groups in order of first appearance (candidates of one question)."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


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
        """:func:`first_error` of this record's labels."""
        return first_error(self.labels, threshold)

    def known_labels(self) -> list[float]:
        """The step labels that are labels (unlabeled steps left out)."""
        return [float(x) for x in self.labels if is_label(x)]

    def mean_label(self) -> float:
        """Mean of the known step labels (NaN when no step is labeled)."""
        return aggregate(self.known_labels(), "mean")
