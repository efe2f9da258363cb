"""The critique template: the one place a critique is written and read back.

Training (:mod:`spare_train.critique.data`), generation (:mod:`spare_train.critique.generate`),
parsing and the exported model card all go through :class:`CritiqueTemplate`, so a critic is
prompted exactly as it was trained and its output is read by the rules that wrote its targets.

A critique of an ``n``-step solution is ``n`` lines and a closing line::

    Step 1: Correctly computes 5 + 2 = 7. Verdict: correct.
    Step 2: Incorrectly computes 7 + 2: it is 9, not 11. Verdict: incorrect.
    Step 3: Carries the earlier error. Verdict: incorrect.
    Conclusion: the first incorrect step is step 2.

(or ``Conclusion: all steps are correct.``). Explanations are normalised when a
:class:`StepCritique` is made (one line, single spaces, ending in ``.``, ``!`` or ``?``), which
is what makes ``template.parse(template.render(c)).critique == c`` hold for every critique.

:meth:`CritiqueTemplate.parse` is strict: it never guesses. A text that is not exactly that shape
comes back with ``error`` set to the reason (``"step 3: no verdict ..."``), and with the steps
that did parse, in order, before the problem.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from spare_train.records import Prompt

CORRECT_WORD, INCORRECT_WORD = "correct", "incorrect"
_END = (".", "!", "?")


def clean_explanation(text: str) -> str:
    """One line, single spaces, ending in sentence punctuation (``.`` is added when missing);
    ``""`` for blank text."""
    text = " ".join(text.split())
    if text and not text.endswith(_END):
        text += "."
    return text


@dataclass(frozen=True)
class StepCritique:
    """One step's explanation (normalised by :func:`clean_explanation`) and verdict."""

    explanation: str
    correct: bool

    def __post_init__(self) -> None:
        clean = clean_explanation(self.explanation)
        if not clean:
            raise ValueError("a step critique needs an explanation")
        object.__setattr__(self, "explanation", clean)


@dataclass(frozen=True)
class Critique:
    """A critique of every step of one solution, in order."""

    steps: tuple[StepCritique, ...]

    @property
    def verdicts(self) -> list[bool]:
        return [s.correct for s in self.steps]

    @property
    def first_error(self) -> int:
        """0-based index of the first step judged incorrect, -1 when all are correct."""
        return next((i for i, s in enumerate(self.steps) if not s.correct), -1)


@dataclass
class ParsedCritique:
    """What :meth:`CritiqueTemplate.parse` read.

    ``steps`` are the step critiques that parsed, in order (all of them when ``error`` is None);
    ``verdict_offsets[i]`` is the character offset in the text of step ``i``'s verdict word (where
    a generator reads P("correct")); ``error`` is None or the reason the text is malformed.
    """

    steps: list[StepCritique] = field(default_factory=list)
    verdict_offsets: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def critique(self) -> Critique:
        if self.error is not None:
            raise ValueError(f"malformed critique: {self.error}")
        return Critique(tuple(self.steps))


@dataclass(frozen=True)
class CritiqueTemplate:
    """Prompts for critics and refiners, and the critique text format (see the module docstring).

    Args:
        instruction: the fixed critique instruction, after the numbered steps.
        refine_instruction: the fixed refinement instruction, after the critique.
        step_prefix: how each step is numbered, in the prompt and in the critique (``{k}`` is 1-based).
        conclusion_error: the closing line when a step is incorrect (``{k}``: the first one).
        conclusion_correct: the closing line when every step is correct.
        quote_steps: start each step's explanation with the step itself, on one line (the paper's
            critics repeat each step before judging it): the check then sits next to what it
            checks, instead of a long way back in the prompt.
    """

    instruction: str = "Check each step and give a verdict, then name the first incorrect step."
    refine_instruction: str = "Using the critique, write a correct solution step by step."
    step_prefix: str = "Step {k}: "
    conclusion_error: str = "Conclusion: the first incorrect step is step {k}."
    conclusion_correct: str = "Conclusion: all steps are correct."
    quote_steps: bool = False

    def __post_init__(self) -> None:
        for name in ("step_prefix", "conclusion_error"):
            if getattr(self, name).count("{k}") != 1:
                raise ValueError(f"{name} must hold '{{k}}' exactly once, got {getattr(self, name)!r}")

    # ------------------------------------------------------------------ prompts
    def solution_text(self, steps: Sequence[str], preamble: str = "") -> str:
        """The candidate solution as the critic sees it: preamble, then one numbered step a line."""
        lines = [self.step_prefix.format(k=k) + step for k, step in enumerate(steps, 1)]
        return "\n".join(([preamble] if preamble else []) + lines)

    def prompt(self, prompt: Prompt, steps: Sequence[str], preamble: str = "") -> Prompt:
        """The critic's prompt: the task's instruction (system), then the question, the numbered
        steps and :attr:`instruction` (user)."""
        user = f"{prompt.question}\n\nSolution:\n{self.solution_text(steps, preamble)}\n\n{self.instruction}"
        return Prompt(question=user, instruction=prompt.instruction, context=prompt.context)

    def refine_prompt(self, prompt: Prompt, steps: Sequence[str], critique: Critique, preamble: str = "") -> Prompt:
        """The refiner's prompt: question, the incorrect solution, its critique, :attr:`refine_instruction`."""
        user = (f"{prompt.question}\n\nSolution:\n{self.solution_text(steps, preamble)}\n\n"
                f"Critique:\n{self.render(critique)}\n\n{self.refine_instruction}")  # fmt: skip
        return Prompt(question=user, instruction=prompt.instruction, context=prompt.context)

    # ------------------------------------------------------------------ critique text
    def step_critique(self, step: str, explanation: str, correct: bool) -> StepCritique:
        """One step's critique from its explanation (with :attr:`quote_steps`: the step, then it)."""
        if self.quote_steps:
            explanation = f"{clean_explanation(step)} {explanation}"
        return StepCritique(explanation, correct)

    def render_spans(self, critique: Critique) -> tuple[str, list[tuple[int, int]]]:
        """The critique text and each step line's ``(start, end)`` character span in it."""
        lines, spans, pos = [], [], 0
        for k, s in enumerate(critique.steps, 1):
            line = f"{self.step_prefix.format(k=k)}{s.explanation} Verdict: {CORRECT_WORD if s.correct else INCORRECT_WORD}."
            spans.append((pos, pos + len(line)))
            lines.append(line)
            pos += len(line) + 1
        k = critique.first_error
        lines.append(self.conclusion_correct if k < 0 else self.conclusion_error.format(k=k + 1))
        return "\n".join(lines), spans

    def render(self, critique: Critique) -> str:
        """The critique as the critic writes it (the training target)."""
        return self.render_spans(critique)[0]

    def parse(self, text: str, num_steps: int | None = None) -> ParsedCritique:
        """Read a critique back, strictly; ``num_steps``: the solution's step count, when known.

        Malformed (``error`` set, with the reason): a line that is neither the next step nor the
        conclusion, steps out of order, a verdict other than correct/incorrect, a step count that
        differs from ``num_steps``, a missing or inconsistent conclusion, anything after it.
        """
        out = ParsedCritique()
        if not text.strip():
            out.error = "empty critique"
            return out
        step_re = self._step_pattern()
        pos = 0
        lines = text.split("\n")
        for n, line in enumerate(lines):
            k = len(out.steps) + 1
            m = step_re.fullmatch(line)
            if m is None:
                if self._is_conclusion(line):
                    return self._finish(out, line, lines[n + 1 :], num_steps)
                if line.startswith(self.step_prefix.split("{k}")[0]):
                    out.error = f"line {n + 1} is not '<step>: <explanation> Verdict: correct|incorrect.': {line[:80]!r}"
                else:
                    out.error = f"line {n + 1} is neither step {k} nor the conclusion: {line[:80]!r}"
                return out
            if int(m.group(1)) != k:
                out.error = f"steps out of order: expected step {k}, got step {m.group(1)}"
                return out
            if m.group(3) not in (CORRECT_WORD, INCORRECT_WORD):
                out.error = f"step {k}: verdict {m.group(3)!r} is neither {CORRECT_WORD!r} nor {INCORRECT_WORD!r}"
                return out
            if not m.group(2).strip():
                out.error = f"step {k}: empty explanation"
                return out
            if num_steps is not None and k > num_steps:
                out.error = f"critique has more steps than the solution's {num_steps}"
                return out
            out.steps.append(StepCritique(m.group(2), m.group(3) == CORRECT_WORD))
            out.verdict_offsets.append(pos + m.start(3))
            pos += len(line) + 1
        out.error = "no conclusion line" if out.steps else "no step critique"
        return out

    def _step_pattern(self) -> re.Pattern:
        head, _, tail = self.step_prefix.partition("{k}")
        return re.compile(f"{re.escape(head)}(\\d+){re.escape(tail)}(.*) Verdict: (\\w+)\\.")

    def _is_conclusion(self, line: str) -> bool:
        head = self.conclusion_error.split("{k}")[0]
        return line == self.conclusion_correct or line.startswith(head)

    def _finish(self, out: ParsedCritique, line: str, rest: list[str], num_steps: int | None) -> ParsedCritique:
        if not out.steps:
            out.error = "conclusion before any step critique"
        elif num_steps is not None and len(out.steps) != num_steps:
            out.error = f"critique covers {len(out.steps)} steps, the solution has {num_steps}"
        elif line != self.render(Critique(tuple(out.steps))).rsplit("\n", 1)[-1]:
            first = Critique(tuple(out.steps)).first_error
            want = "all steps correct" if first < 0 else f"step {first + 1} first incorrect"
            out.error = f"conclusion {line!r} does not match the verdicts ({want})"
        elif any(rest):
            out.error = "text after the conclusion"
        elif rest:  # a trailing newline: the rendered text never ends with one
            out.error = "trailing newline after the conclusion"
        return out


#: the template every critic of this package is trained and read with
TEMPLATE = CritiqueTemplate()
