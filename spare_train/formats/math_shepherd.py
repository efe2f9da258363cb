"""Reader for Math-Shepherd (``peiyi9979/Math-Shepherd``): Monte-Carlo step labels on GSM8K/MATH.

A row is ``{"input", "label", "task"}``. ``input`` is the question followed by the solution
whose steps each end with the tag ``" ки"``; ``label`` is the same text with every tag's
``ки`` replaced by ``+`` (a rollout from this step reached the right answer) or ``-``. Labels
are read by position, so a ``+`` inside the maths can never be mistaken for a label.

``label`` must equal ``input`` with each tag's ``ки`` replaced by its mark, character for
character (``label_text_mismatch`` names the first difference), so a label file that belongs
to another row can never be read by position alone.

The question is the text before the ``Step 1:`` (any case) that starts the first step: the
last one before the first tag, so a question that itself mentions "step 1:" keeps it. Without
step prefixes it is the text before the last line break preceding the first tag, or up to the
last ``?``. A few published rows carry a tag inside the question (annotation errors): such tags
are dropped with their labels (repair ``tag_in_question``, refused by ``--strict``). Steps keep
their ``Step k:`` prefix unless ``strip_step_prefix=True``. The outcome is the last step's label (for the final step a
correct rollout means the answer itself is right).

Ids: ``group_id = "ms-{hash of the question}"``, ``id = f"{group_id}#{k}"`` with ``k`` the
row's 0-based position among its group's rows in input order.
"""

from __future__ import annotations

import re
from typing import Any

from spare_train.formats.answers import extract_answer
from spare_train.formats.base import ReadContext, require, text_hash
from spare_train.records import CORRECT, INCORRECT, Prompt, StepRecord
from spare_train.report import DataError

_STEP_ONE = re.compile(r"\bstep\s*1\s*:", re.IGNORECASE)
_STEP_TWO = re.compile(r"step\s*2\s*:", re.IGNORECASE)
_STEP_PREFIX = re.compile(r"^step\s*\d+\s*:\s*", re.IGNORECASE)


def read(
    obj: dict[str, Any],
    ctx: ReadContext,
    *,
    tag: str = " ки",
    input_field: str = "input",
    label_field: str = "label",
    strip_step_prefix: bool = False,
) -> list[StepRecord | DataError]:
    """One Math-Shepherd row -> one record."""
    text = require(obj, input_field, str, ctx)
    marked = require(obj, label_field, str, ctx)
    if not text.strip():
        raise ctx.error("empty_candidate", f"{input_field!r} is empty")
    positions = _find_all(text, tag)
    if not positions:
        raise ctx.error("no_steps", f"no step tag {tag!r} in {input_field!r}")

    # Where the tag's core (e.g. "ки") sits, and how much shorter the label text is per tag.
    lead = len(tag) - len(tag.lstrip())
    shrink = len(tag.strip()) - 1
    if len(marked) != len(text) - shrink * len(positions):
        raise ctx.error("label_text_mismatch", f"{label_field!r} does not line up with {input_field!r}")
    marks = [marked[p - i * shrink + lead] for i, p in enumerate(positions)]
    bad = [m for m in marks if m not in "+-"]
    if bad:
        raise ctx.error("bad_label", f"expected '+' or '-' where the tags are, found {bad[0]!r}")
    _check_label_text(text, marked, positions, marks, tag, ctx, label_field, input_field)

    q_end = _question_end(text, positions[0], tag)
    if q_end is None:
        raise ctx.error("no_question", "cannot tell where the question ends and the first step begins")
    question = text[:q_end].replace(tag, "").strip()
    group_id = ctx.group_id(f"ms-{text_hash(question)}", question)
    rid = f"{group_id}#{ctx.position_in_group(group_id)}"

    steps: list[str] = []
    labels: list[float | None] = []
    start = q_end
    dropped = sum(p < q_end for p in positions)
    if dropped and dropped < len(positions):
        ctx.repair("tag_in_question", f"{dropped} step tag(s) inside the question dropped with their labels", rid)
    for p, m in zip(positions, marks, strict=True):
        if p < q_end:
            continue
        step = text[start:p].strip()
        steps.append(_STEP_PREFIX.sub("", step) if strip_step_prefix else step)
        labels.append(CORRECT if m == "+" else INCORRECT)
        start = p + len(tag)
    if text[start:].strip():
        ctx.note("text_after_last_tag")
    if not steps:
        raise ctx.error("no_steps", "every tag is inside the question", rid)
    extra = {"task": obj["task"]} if obj.get("task") is not None else {}
    return [
        StepRecord(
            id=rid,
            group_id=group_id,
            prompt=Prompt(question=question),
            steps=steps,
            labels=labels,
            outcome=int(labels[-1]),
            source=ctx.source,
            answer=extract_answer(steps[-1]),
            extra=extra,
        )
    ]


def _find_all(text: str, tag: str) -> list[int]:
    out, p = [], text.find(tag)
    while p != -1:
        out.append(p)
        p = text.find(tag, p + len(tag))
    return out


def _check_label_text(text, marked, positions, marks, tag, ctx, label_field, input_field) -> None:
    """``marked`` must be ``text`` with each tag's core replaced by its mark, character for character."""
    lead, core = len(tag) - len(tag.lstrip()), tag.strip()
    pieces, start = [], 0
    for p, m in zip(positions, marks):
        pieces += [text[start : p + lead], m]
        start = p + lead + len(core)
    expected = "".join(pieces) + text[start:]
    if expected != marked:
        i = next(i for i, (a, b) in enumerate(zip(expected, marked)) if a != b)
        got, want = marked[max(0, i - 15) : i + 15], expected[max(0, i - 15) : i + 15]
        raise ctx.error("label_text_mismatch", f"{label_field!r} differs from {input_field!r} at character {i}: "
                                               f"{got!r} vs {want!r}")  # fmt: skip


def _question_end(text: str, first_tag: int, tag: str) -> int | None:
    """Where the first step starts: its ``Step 1:`` when the steps are numbered (the last one
    before the first tag, so a question that itself says "step 1:" is not cut there), else a
    line break or a ``?``."""
    after = text[first_tag + len(tag) :].lstrip()
    numbered = _STEP_TWO.match(after) is not None or not after.strip() or tag not in after
    before = [m for m in _STEP_ONE.finditer(text) if m.start() < first_tag]
    m = before[-1] if before else _STEP_ONE.search(text)  # none before: a stray tag in the question
    if m and (numbered or not before):
        return m.start()
    head = text[:first_tag].rstrip()
    if "\n" in head.strip():
        return head.rfind("\n") + 1
    q = head.rfind("?")
    return q + 1 if q != -1 else None
