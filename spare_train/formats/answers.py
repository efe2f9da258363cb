"""Final-answer extraction, used to fill ``StepRecord.answer`` for majority and PRM-weighted voting.

Patterns are tried from the most to the least explicit, and within a pattern the last match
wins (a solution may restate an intermediate result before its final one):

1. ``\\boxed{…}`` / ``\\fbox{…}`` (braces balanced),
2. ``#### x`` (GSM8K references),
3. ``# Answer`` followed by the answer (PRM800K),
4. a line starting ``A: x`` (GSM8K model solutions),
5. ``… answer is x`` / ``answer: x`` up to the end of the line,
6. otherwise the last number in the text.

Numbers are normalised so that equal values compare equal as strings: thousands separators
and ``$`` go, ``18.0`` becomes ``18``, ``.5`` becomes ``0.5``. Anything else is returned
stripped of surrounding ``$``, spaces and a trailing full stop.
"""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES = re.compile(r"####\s*(.+)")
_ANSWER_HEADING = re.compile(r"^#\s*Answer\s*\n+\s*(.+)", re.MULTILINE)
_A_LINE = re.compile(r"^\s*A:\s*(.+)$", re.MULTILINE)
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_NUMERIC = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def extract_answer(text: str) -> str | None:
    """The final answer stated in ``text``, normalised, or ``None`` when there is none."""
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return normalize_answer(boxed)
    for pattern in (_HASHES, _ANSWER_HEADING, _A_LINE, _ANSWER_IS):
        matches = pattern.findall(text)
        if matches:
            value = normalize_answer(matches[-1])
            if value:
                return value
    numbers = _NUMBER.findall(text)
    return normalize_answer(numbers[-1]) if numbers else None


def normalize_answer(value: str) -> str | None:
    """Strip decoration; canonicalise numbers (``"1,000"`` -> ``"1000"``, ``"18.0"`` -> ``"18"``)."""
    s = value.strip().strip("$ ").rstrip(".").strip("$ ")
    if not s:
        return None
    compact = s.replace(",", "").replace("\\!", "").replace("$", "").replace(" ", "")
    if _NUMERIC.fullmatch(compact):
        return _canonical_number(compact)
    return s


def _canonical_number(s: str) -> str:
    sign = "-" if s.startswith("-") else ""
    s = s.lstrip("+-")
    whole, _, frac = s.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    out = f"{whole}.{frac}" if frac else whole
    return "0" if out == "0" else sign + out


def _last_boxed(text: str) -> str | None:
    last = None
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            last = text[m.end() : i - 1]
    return last
