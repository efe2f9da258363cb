"""Seeded synthetic SPARE annotations: arithmetic chains with planted step errors.

Each question is a short chain ("Start with 7. Add 5, then multiply by 3, then subtract 4. What
is the result?"). The reference solution has one step per operation (``7 + 5 = 12``) and a final
step (``The answer is 32.``). Candidates are either the reference or carry exactly one planted
error; every step after the error is computed correctly *from the wrong value*, so the final
answer is wrong too (``+k``, ``-k`` and ``*k`` are injective, so a wrong value never recovers).

Rows are written in the official SPARE annotator output format, so the same reader that loads
real SPARE files loads these:

``question_id``, ``output_idx``, ``instruction``, ``question`` (and ``context`` when split off),
``reference_ans`` and ``grade_ans`` (steps as ``"[1] …\\n[2] …"``, a few candidates with a short
preamble before ``[1]``), ``grading`` (a JSON *string*: a list of
``{"student_step", "reference_steps", "explanation", "error_type", "label"}`` objects, with a
few deliberately malformed like real LLM gradings), ``em`` (1 if the final answer is right) and
``extracted`` (the candidate's final answer).

``student_step`` (1-based) and ``label`` (``"CORRECT"``/``"INCORRECT"``) are the two fields the
official SPARE training code reads; the other three are what a SPARE judge writes besides them.

Labels follow what a reference-guided judge gives: steps before the error CORRECT, the erroneous
step INCORRECT, and later steps INCORRECT (error type ``propagated``) because they diverge from
the reference. Numbers stay small (operands 1..9, multipliers 2..3, results 0..99 by default) so
a tiny model can learn to check a step from the step and its predecessors.

Same arguments, same rows, same bytes: all randomness comes from one ``random.Random(seed)``.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

#: Error kinds a candidate can carry at its erroneous step.
#: ``calculation``: ``a op b = r`` with the wrong ``r``.
#: ``copy``: the value carried over is wrong (the previous result, the start number from the
#: question, or the final answer restating the last result), the arithmetic itself is right.
#: ``misread``: the operation or its number differs from the question, the arithmetic is right.
ERROR_TYPES: tuple[str, ...] = ("calculation", "copy", "misread")

#: Error type written on steps after the first error.
PROPAGATED = "propagated"

DEFAULT_INSTRUCTION = "Solve the problem step by step."
PREAMBLE = "Let's think step by step.\n"
_PHRASES = {"+": "add {k}", "-": "subtract {k}", "*": "multiply by {k}"}
_APPLY = {"+": lambda a, k: a + k, "-": lambda a, k: a - k, "*": lambda a, k: a * k}


@dataclass(frozen=True)
class Problem:
    """One arithmetic chain: ``start`` then ``ops[i] = (op, k)`` applied in order."""

    start: int
    ops: tuple[tuple[str, int], ...]

    def question(self, with_start: bool = True) -> str:
        phrases = [_PHRASES[op].format(k=k) for op, k in self.ops]
        chain = ", then ".join(phrases)
        text = f"{chain[0].upper()}{chain[1:]}. What is the result?"
        return f"Start with {self.start}. {text}" if with_start else text

    def values(self) -> list[int]:
        """Running values: ``[start, after op 1, …, final]``."""
        vals = [self.start]
        for op, k in self.ops:
            vals.append(_APPLY[op](vals[-1], k))
        return vals

    @property
    def answer(self) -> int:
        return self.values()[-1]


@dataclass
class Candidate:
    """A solution: step texts, per-step labels/types, the error step (-1 if none)."""

    steps: list[str]
    final: int
    error_step: int = -1
    error_type: str | None = None
    detail: str = ""


def _step(a: int, op: str, k: int, r: int) -> str:
    return f"{a} {op} {k} = {r}"


def _final(answer: int) -> str:
    return f"The answer is {answer}."


def make_problem(
    rng: random.Random,
    *,
    min_ops: int = 2,
    max_ops: int = 4,
    max_start: int = 20,
    max_addend: int = 9,
    max_multiplier: int = 3,
    max_value: int = 99,
) -> Problem:
    """Draw one chain whose every intermediate value lies in ``0..max_value``."""
    start = rng.randint(1, max_start)
    value, ops = start, []
    for _ in range(rng.randint(min_ops, max_ops)):
        options: dict[str, list[int]] = {
            "+": [k for k in range(1, max_addend + 1) if value + k <= max_value],
            "-": list(range(1, min(max_addend, value) + 1)),
            "*": [k for k in range(2, max_multiplier + 1) if value * k <= max_value and value > 0],
        }
        op = rng.choice([o for o in "+-*" if options[o]])
        k = rng.choice(options[op])
        ops.append((op, k))
        value = _APPLY[op](value, k)
    return Problem(start, tuple(ops))


SPLITS = ("all", "train", "test")


def problem_split(problem: Problem, test_fraction: float) -> str:
    """``"test"`` for a fixed ``test_fraction`` of all problems, else ``"train"``.

    Decided by a hash of the question text, so a train file and a test file generated with any
    seeds never share a question (small number ranges have few distinct problems, and random
    draws would otherwise repeat training questions in the test file).
    """
    digest = hashlib.sha256(problem.question().encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") < test_fraction * 2**64 else "train"


def reference_candidate(problem: Problem) -> Candidate:
    vals = problem.values()
    steps = [_step(vals[i], op, k, vals[i + 1]) for i, (op, k) in enumerate(problem.ops)]
    return Candidate(steps + [_final(vals[-1])], vals[-1])


def _offset(rng: random.Random, value: int, max_offset: int) -> int:
    """``value`` moved by a nonzero offset in ``±1..max_offset``, kept non-negative."""
    choices = [value + d for d in range(-max_offset, max_offset + 1) if d and value + d >= 0]
    return rng.choice(choices)


def plant_error(
    problem: Problem,
    rng: random.Random,
    *,
    error_types: tuple[str, ...] = ERROR_TYPES,
    max_error_offset: int = 10,
    max_multiplier: int = 3,
    max_addend: int = 9,
    attempts: int = 50,
) -> Candidate:
    """A candidate with exactly one planted error, or the reference if none could be placed.

    Values after the error may leave the reference's range (a wrong value times 3) but stay
    within 0..999, each a single token of the tiny tokenizer.
    """
    n = len(problem.ops)
    correct = problem.values()
    for _ in range(attempts):
        e = rng.randint(0, n)  # n is the final "The answer is" step
        kind = "copy" if e == n else rng.choice(error_types)
        if kind not in error_types:
            continue
        steps: list[str] = []
        value = correct[0]
        detail = ""
        for i, (op, k) in enumerate(problem.ops):
            a, use_op, use_k = value, op, k
            if i == e and kind == "copy":
                a = _offset(rng, value, max_error_offset)
                src = "the start number" if i == 0 else "the previous result"
                detail = f"Incorrectly uses {a}: {src} is {value}."
            elif i == e and kind == "misread":
                if rng.random() < 0.5:
                    use_op = rng.choice([o for o in "+-*" if o != op])
                    use_k = k if use_op != "*" else rng.randint(2, max_multiplier)
                else:
                    lim = max_multiplier if op == "*" else max_addend
                    others = [j for j in range(2 if op == "*" else 1, lim + 1) if j != k]
                    if not others:
                        break
                    use_k = rng.choice(others)
                detail = (
                    f"Incorrectly reads the question: it says to {_PHRASES[op].format(k=k)}, "
                    f"but the step does {a} {use_op} {use_k}."
                )
            r = _APPLY[use_op](a, use_k)
            if i == e and kind == "calculation":
                right = r
                r = _offset(rng, r, max_error_offset)
                detail = f"Incorrectly computes {a} {op} {k}: it is {right}, not {r}."
            if i == e and r == correct[i + 1]:
                break  # the slip happened to give the right value: not an error
            if not 0 <= r <= 999:
                break
            steps.append(_step(a, use_op, use_k, r))
            value = r
        else:
            final = value
            if e == n:
                final = _offset(rng, value, max_error_offset)
                detail = f"Incorrectly states {final}: the last result is {value}."
            if final > 999:
                continue
            steps.append(_final(final))
            assert final != correct[-1]
            return Candidate(steps, final, e, kind, detail)
    return reference_candidate(problem)


def correct_explanation(problem: Problem, vals: list[int], i: int) -> str:
    """What the judge writes for correct step ``i``: its judgement first, then the check, as LLM
    judges phrase it (``Correctly computes 6 + 2 = 8.`` against a wrong step's ``Incorrectly
    computes 6 + 2: it is 8, not 10.``). The judgement then sits right after the step a critic
    quotes, where a PRM scores it (see docs/critique.md)."""
    if i < len(problem.ops):
        op, k = problem.ops[i]
        return f"Correctly computes {vals[i]} {op} {k} = {vals[i + 1]}."
    return f"Correctly states {vals[-1]}, the last result."


def grading_entries(problem: Problem, cand: Candidate) -> list[dict[str, Any]]:
    """The SPARE judge output for ``cand``: one object per step, aligned 1:1 to the reference."""
    entries = []
    vals = problem.values()
    for i, step in enumerate(cand.steps):
        if cand.error_step < 0 or i < cand.error_step:
            label, etype, explanation = "CORRECT", None, correct_explanation(problem, vals, i)
        elif i == cand.error_step:
            label, etype, explanation = "INCORRECT", cand.error_type, cand.detail
        else:
            label, etype, explanation = "INCORRECT", PROPAGATED, "Carries the earlier error."
        entry: dict[str, Any] = {"student_step": i + 1, "reference_steps": [i + 1]}
        entry["explanation"] = explanation
        if etype is not None:
            entry["error_type"] = etype
        entry["label"] = label
        entries.append(entry)
    return entries


def markers(steps: list[str], preamble: str = "") -> str:
    """``"[1] step\\n[2] step"``, the step format SPARE gradings refer to."""
    return preamble + "\n".join(f"[{i + 1}] {s}" for i, s in enumerate(steps))


def _malform(text: str, rng: random.Random) -> str:
    """Break the JSON the way LLM judges do; json_repair recovers all three."""
    how = rng.randrange(3)
    if how == 0:
        return text[:-1] + ",]"  # trailing comma after the last object
    if how == 1:
        return text[:-2] + ', }]'  # trailing comma inside the last object
    return text[:-1]  # closing bracket missing


@dataclass
class SynthConfig:
    """What ``spare-train data synth`` generates.

    Seeded arithmetic-chain problems with candidate solutions carrying planted step errors, in the
    SPARE annotator format.

    Args:
        num_questions: questions to draw; candidates of one question share ``question_id``.
        seed: everything is derived from ``random.Random(seed)``; same seed, same bytes.
        candidates_per_question: candidate solutions per question.
        min_ops: fewest operations in a chain (a solution has ``ops + 1`` steps).
        max_ops: most operations in a chain.
        max_start: the start number is drawn from ``1..max_start``.
        max_addend: numbers added or subtracted are drawn from ``1..max_addend``.
        max_multiplier: multipliers are drawn from ``2..max_multiplier``.
        max_value: every value of the reference solution stays in ``0..max_value``.
        error_rate: probability that a candidate carries one planted error.
        error_types: which of ``calculation``, ``copy``, ``misread`` to plant (``copy`` is always
            used for an error in the final step).
        max_error_offset: a wrong number differs from the right one by ``1..max_error_offset``.
        preamble_rate: fraction of candidates with "Let's think step by step." before ``[1]``.
        malformed_rate: fraction of rows whose ``grading`` JSON is slightly broken (trailing
            comma, missing bracket), as real SPARE gradings sometimes are.
        context_rate: fraction of questions whose "Start with N." goes to a ``context`` field.
        instruction: the ``instruction`` field (the system message downstream).
        id_prefix: ``question_id`` is ``f"{id_prefix}-{seed}-{index:06d}"``.
        split: ``all`` draws from every problem; ``train`` / ``test`` only from problems of that
            side of a fixed hash split of the question text, so the two never overlap.
        test_fraction: share of all problems on the ``test`` side of that split.
    """

    num_questions: int = 100
    seed: int = 0
    candidates_per_question: int = 4
    min_ops: int = 2
    max_ops: int = 4
    max_start: int = 20
    max_addend: int = 9
    max_multiplier: int = 3
    max_value: int = 99
    error_rate: float = 0.5
    error_types: list[str] = field(default_factory=lambda: list(ERROR_TYPES))
    max_error_offset: int = 10
    preamble_rate: float = 0.05
    malformed_rate: float = 0.02
    context_rate: float = 0.0
    instruction: str = DEFAULT_INSTRUCTION
    id_prefix: str = "synth"
    split: Literal["all", "train", "test"] = "all"
    test_fraction: float = 0.1


#: the bundled files (data/synth/): single digits so a tiny model learns the task on a CPU
BUNDLED = {
    "train": SynthConfig(num_questions=1400, seed=0, split="train", max_start=9, max_addend=3, max_multiplier=2,
                         max_value=9, max_error_offset=3, error_rate=0.75, error_types=["calculation"]),
    "test": SynthConfig(num_questions=200, seed=1, split="test", max_start=9, max_addend=3, max_multiplier=2,
                        max_value=9, max_error_offset=3, error_rate=0.75, error_types=["calculation"]),
}  # fmt: skip


def generate(config: SynthConfig) -> list[dict[str, Any]]:
    """Rows in the SPARE annotator format, ``num_questions * candidates_per_question`` of them
    (see :class:`SynthConfig`)."""
    c = config
    num_questions, seed, candidates_per_question = c.num_questions, c.seed, c.candidates_per_question
    min_ops, max_ops, error_types, split, test_fraction = c.min_ops, c.max_ops, tuple(c.error_types), c.split, c.test_fraction
    max_start, max_addend, max_multiplier, max_value = c.max_start, c.max_addend, c.max_multiplier, c.max_value
    error_rate, max_error_offset, preamble_rate, malformed_rate = c.error_rate, c.max_error_offset, c.preamble_rate, c.malformed_rate
    context_rate, instruction, id_prefix = c.context_rate, c.instruction, c.id_prefix
    unknown = set(error_types) - set(ERROR_TYPES)
    if unknown or not error_types:
        raise ValueError(f"error_types must be a non-empty subset of {ERROR_TYPES}, got {error_types}")
    if not 1 <= min_ops <= max_ops:
        raise ValueError(f"need 1 <= min_ops <= max_ops, got {min_ops}, {max_ops}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split != "all" and not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = random.Random(seed)
    shape = dict(
        max_start=max_start, max_addend=max_addend, max_multiplier=max_multiplier, max_value=max_value
    )
    rows = []
    for q in range(num_questions):
        for _ in range(10_000):
            problem = make_problem(rng, min_ops=min_ops, max_ops=max_ops, **shape)
            if split == "all" or problem_split(problem, test_fraction) == split:
                break
        else:
            raise ValueError(f"no {split} problem found: widen the number ranges or test_fraction")
        qid = f"{id_prefix}-{seed}-{q:06d}"
        split_context = rng.random() < context_rate
        base: dict[str, Any] = {"question_id": qid, "instruction": instruction}
        if split_context:
            base["context"] = f"Start with {problem.start}."
        base["question"] = problem.question(with_start=not split_context)
        base["reference_ans"] = markers(reference_candidate(problem).steps)
        for c in range(candidates_per_question):
            if rng.random() < error_rate:
                cand = plant_error(
                    problem,
                    rng,
                    error_types=tuple(error_types),
                    max_error_offset=max_error_offset,
                    max_multiplier=max_multiplier,
                    max_addend=max_addend,
                )
            else:
                cand = reference_candidate(problem)
            preamble = PREAMBLE if rng.random() < preamble_rate else ""
            grading = json.dumps(grading_entries(problem, cand), ensure_ascii=False)
            if rng.random() < malformed_rate:
                grading = _malform(grading, rng)
            rows.append(
                {
                    **base,
                    "output_idx": c,
                    "grade_ans": markers(cand.steps, preamble),
                    "grading": grading,
                    "em": int(cand.final == problem.answer),
                    "extracted": str(cand.final),
                }
            )
    return rows


def write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write one JSON object per line (UTF-8, ``\\n`` endings, keys in insertion order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
