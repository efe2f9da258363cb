"""Reader for PRM800K (openai/prm800k ``phase1_*.jsonl`` / ``phase2_*.jsonl``): human step ratings.

A row is one labelled solution: ``question.problem``, and ``label.steps``, each with
``completions`` (alternative next steps, each rated -1/0/+1), ``chosen_completion`` (the
index the trajectory continued with) and ``human_completion`` (phase 1: a labeller-written
step used when every completion was rated -1).

The record follows the trajectory: the chosen completion; else the human completion (rated +1
unless it says otherwise); else, where ``chosen_completion`` is null without a human step
(typically the last step of a ``found_error`` solution), the first completion rated -1 if
any, otherwise the first completion.

Ratings: +1 -> 1.0, -1 -> 0.0, 0 -> ``neutral_as``. The default 1.0 follows common practice
(the PRM800K paper and most PRM training treat "neutral" as not wrong); 0.0 treats it as an
error, ``None`` leaves the step unlabeled. A missing rating leaves the step unlabeled.

Outcome from ``label.finish_reason``: ``"solution"`` -> 1, ``"found_error"`` -> 0, else
(``give_up``, ``bad_problem``) unknown. ``reference`` is the MATH ground-truth solution
(one element). Ids: ``group_id = "prm-{hash of the problem}"``, ``id = f"{group_id}#{k}"``
with ``k`` the 0-based position of the row among its group's rows in input order.
"""

from __future__ import annotations

from typing import Any, Literal

from spare_train.formats.answers import extract_answer
from spare_train.formats.base import ReadContext, require, text_hash
from spare_train.records import CORRECT, INCORRECT, Prompt, StepRecord
from spare_train.report import DataError

_OUTCOMES = {"solution": 1, "found_error": 0}


def read(
    obj: dict[str, Any],
    ctx: ReadContext,
    *,
    neutral_as: Literal[1.0, 0.0, None] = 1.0,
) -> list[StepRecord | DataError]:
    """One PRM800K row -> one record along the chosen trajectory."""
    question = require(obj, "question", dict, ctx)
    problem = require(question, "problem", str, ctx)
    label = require(obj, "label", dict, ctx)
    group_id = f"prm-{text_hash(problem)}"
    rid = f"{group_id}#{ctx.position_in_group(group_id)}"
    raw_steps = require(label, "steps", list, ctx, rid)
    ratings = {1: CORRECT, -1: INCORRECT, 0: None if neutral_as is None else float(neutral_as)}

    steps: list[str] = []
    labels: list[float | None] = []
    for i, step in enumerate(raw_steps, 1):
        if not isinstance(step, dict):
            raise ctx.error("wrong_type", f"label.steps[{i - 1}] must be an object", rid)
        text, rating = _chosen(step, i, ctx, rid)
        if rating is not None and rating not in ratings:
            raise ctx.error("bad_label", f"rating {rating!r} of step {i} is not -1, 0 or 1", rid)
        steps.append(text.strip())
        labels.append(None if rating is None else ratings[rating])

    truth = question.get("ground_truth_solution")
    extra = {k: obj[k] for k in ("labeler", "generation", "is_quality_control_question") if k in obj}
    return [
        StepRecord(
            id=rid,
            group_id=group_id,
            prompt=Prompt(question=problem),
            steps=steps,
            labels=labels,
            outcome=_OUTCOMES.get(label.get("finish_reason")),
            reference=[truth] if isinstance(truth, str) and truth.strip() else None,
            source=ctx.source,
            answer=extract_answer(steps[-1]) if steps else None,
            extra=extra,
        )
    ]


def _chosen(step: dict, i: int, ctx: ReadContext, rid: str) -> tuple[str, Any]:
    """``(text, rating)`` of the completion the trajectory takes at step ``i``."""
    completions = step.get("completions") or []
    if not isinstance(completions, list) or not all(isinstance(c, dict) for c in completions):
        raise ctx.error("wrong_type", f"completions of step {i} must be a list of objects", rid)
    chosen = step.get("chosen_completion")
    human = step.get("human_completion")
    if chosen is not None:
        if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < len(completions):
            raise ctx.error(
                "wrong_type", f"chosen_completion {chosen!r} of step {i} is not a valid index", rid
            )
        pick = completions[chosen]
    elif isinstance(human, str):
        return human, 1
    elif isinstance(human, dict) and isinstance(human.get("text"), str):
        rating = human.get("rating")
        return human["text"], 1 if rating is None else rating
    elif completions:
        pick = next((c for c in completions if c.get("rating") == -1), completions[0])
    else:
        raise ctx.error("missing_field", f"step {i} has no completions to follow", rid)
    text = pick.get("text")
    if not isinstance(text, str):
        raise ctx.error("wrong_type", f"completion text of step {i} must be a string", rid)
    return text, pick.get("rating")
