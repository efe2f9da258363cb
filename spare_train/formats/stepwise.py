"""Reader for TRL's stepwise-supervision format (e.g. ``trl-lib/math_shepherd``, ``trl-lib/prm800k``).

A row is ``{"prompt": str | chat, "completions": [step, …], "labels": [label, …]}`` with
labels as bools, 0/1 ints or floats in [0, 1] (``null`` = unlabeled). A chat prompt is a list of
``{"role", "content"}`` messages: system messages become the instruction, the others (joined
by a blank line) the question.

Optional fields: ``id``; ``group_id`` (default ``"p-{hash of the prompt}"``, so candidates of
the same prompt group together; a given ``group_id`` that already names another prompt, e.g.
``7`` and ``"7"`` for two questions, becomes ``group_id~<hash>``, repair ``group_id_conflict``);
``outcome`` (0/1/bool); ``answer`` (else extracted from the last step). Without ``id``, ``id = f"{group_id}#{k}"``, ``k`` the row's 0-based position
among its group's rows in input order.
"""

from __future__ import annotations

from typing import Any

from spare_train.formats.answers import extract_answer
from spare_train.formats.base import ReadContext, optional, require, text_hash, to_label, to_outcome
from spare_train.records import Prompt, StepRecord
from spare_train.report import DataError


def read(
    obj: dict[str, Any],
    ctx: ReadContext,
    *,
    prompt_field: str = "prompt",
    completions_field: str = "completions",
    labels_field: str = "labels",
) -> list[StepRecord | DataError]:
    """One TRL stepwise row -> one record."""
    given_id = optional(obj, "id", (str, int), ctx)
    rid = str(given_id) if given_id is not None else None
    prompt = _prompt(require(obj, prompt_field, (str, list), ctx, rid), prompt_field, ctx, rid)
    completions = require(obj, completions_field, list, ctx, rid)
    raw_labels = require(obj, labels_field, list, ctx, rid)
    steps = [_step_text(s, i, ctx, rid) for i, s in enumerate(completions)]
    if len(raw_labels) != len(steps):
        raise ctx.error("label_count_mismatch", f"{len(raw_labels)} labels for {len(steps)} completions", rid)
    labels = [to_label(x, ctx, rid, f"label of step {i + 1}") for i, x in enumerate(raw_labels)]
    text = f"{prompt.instruction}\n\n{prompt.question}"
    group_id = optional(obj, "group_id", (str, int), ctx, None, rid)
    group_id = ctx.group_id("p-" + text_hash(text) if group_id is None else str(group_id), " ".join(text.split()))
    if rid is None:
        rid = f"{group_id}#{ctx.position_in_group(group_id)}"
    answer = optional(obj, "answer", str, ctx, None, rid)
    return [
        StepRecord(
            id=rid,
            group_id=group_id,
            prompt=prompt,
            steps=steps,
            labels=labels,
            outcome=to_outcome(obj.get("outcome"), ctx, "outcome", rid),
            source=ctx.source,
            answer=answer if answer is not None else (extract_answer(steps[-1]) if steps else None),
        )
    ]


def _prompt(value: str | list, field: str, ctx: ReadContext, rid: str | None) -> Prompt:
    if isinstance(value, str):
        return Prompt(question=value)
    system, other = [], []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ctx.error(
                "wrong_type", f"{field!r} chat messages must be objects with a string 'content'", rid
            )
        (system if m.get("role") == "system" else other).append(m["content"])
    return Prompt(question="\n\n".join(other), instruction="\n\n".join(system))


def _step_text(step: Any, i: int, ctx: ReadContext, rid: str | None) -> str:
    if isinstance(step, str):
        return step.strip()
    if isinstance(step, dict) and isinstance(step.get("content"), str):
        return step["content"].strip()
    raise ctx.error("wrong_type", f"completion {i + 1} must be a string, got {type(step).__name__}", rid)
