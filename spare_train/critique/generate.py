"""Generate critiques with an exported critic, read them with the strict parser, score steps.

``load_critic(path).critique(records)`` prompts the critic exactly as it was trained
(:meth:`CritiqueTemplate.prompt` through the same :func:`~spare_train.data.policy.tokenize_turns`
as training), generates (``model.generate``: batched, greedy or sampled), parses each critique
with :meth:`CritiqueTemplate.parse` and reads, at each verdict, the model's probability of
"correct" against "incorrect" (softmax over the two words' first tokens, from the raw logits of
the step that wrote the verdict). That probability is the critic's step score, so the PRM
metrics (:func:`spare_train.prm.evaluate.evaluate_scores`) apply unchanged.

A malformed critique is never dropped: its record keeps the steps that parsed before the problem
(their verdicts and scores), the others are ``None`` (unscored), and the reason is reported.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spare_train.critique.template import CORRECT_WORD, INCORRECT_WORD, CritiqueTemplate
from spare_train.records import StepRecord

#: what ``spare-train export`` writes next to a critic's or refiner's weights
INFO_NAME = "spare_critic.json"


@dataclass
class CritiqueResult:
    """One record's critique: the text, per step the verdict (True = correct) and P("correct")
    (``None`` where the critique did not parse that far), and ``error``: None or why it is malformed."""

    text: str
    verdicts: list[bool | None]
    p_correct: list[float | None]
    error: str | None = None

    @property
    def first_error(self) -> int | None:
        """0-based first step judged incorrect, -1 for none, None when the critique is malformed."""
        if self.error is not None:
            return None
        return next((i for i, v in enumerate(self.verdicts) if v is False), -1)

    def to_json(self, record: StepRecord) -> dict[str, Any]:
        verdicts = [None if v is None else (CORRECT_WORD if v else INCORRECT_WORD) for v in self.verdicts]
        return {"id": record.id, "group_id": record.group_id, "verdicts": verdicts, "p_correct": self.p_correct,
                "first_error": self.first_error, "malformed": self.error, "critique": self.text}  # fmt: skip


def verdict_token_ids(tokenizer: Any) -> tuple[int, int, int]:
    """``(offset, correct_id, incorrect_id)``: the verdict words (after a space) tokenise alike for
    ``offset`` tokens, then differ at these two ids; that token is where P("correct") is read."""
    a = tokenizer.encode(f" {CORRECT_WORD}", add_special_tokens=False)
    b = tokenizer.encode(f" {INCORRECT_WORD}", add_special_tokens=False)
    d = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return d, a[d], b[d]


class _VerdictLogits:
    """A logits processor that keeps, per generation step, the raw logits of the two verdict tokens
    ``[B, 2]`` (it runs before temperature / top-p, so sampling does not change what it reads)."""

    def __init__(self, ids: tuple[int, int]) -> None:
        self.ids, self.steps = list(ids), []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.steps.append(scores[:, self.ids].float().cpu())
        return scores


def token_ends(tokenizer: Any, ids: list[int], text: str) -> list[int]:
    """Character offset in ``text`` where each token of ``ids`` ends (``text = decode(ids)``)."""
    ends, pos = [], 0
    for i in ids:
        pos += len(tokenizer.decode([i]))
        ends.append(pos)
    if pos == len(text):
        return ends
    return [len(tokenizer.decode(ids[: j + 1])) for j in range(len(ids))]  # multi-byte characters split


class Critic:
    """A loaded critic: ``critique(records)`` -> one :class:`CritiqueResult` per record."""

    def __init__(self, model: Any, tokenizer: Any, info: dict[str, Any]) -> None:
        self.model, self.tokenizer, self.info = model.eval(), tokenizer, info
        self.template = CritiqueTemplate(**info["template"])
        self.prompt_template = info["prompt_format"]["template"]
        self.offset, *self.verdict_ids = verdict_token_ids(tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_ids(self, records: list[StepRecord]) -> list[list[int]]:
        """Token ids of each record's critique prompt, as in training (up to the assistant turn)."""
        from spare_train.data.policy import Turn, tokenize_turns

        turns = [Turn(self.template.prompt(r.prompt, r.steps, r.preamble), "") for r in records]
        return tokenize_turns(turns, self.tokenizer, self.prompt_template)[0]

    @torch.inference_mode()
    def critique(
        self,
        records: list[StepRecord],
        batch_size: int = 16,
        sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_new_tokens: int | None = None,
        progress: bool = False,
    ) -> list[CritiqueResult]:
        """Critiques of ``records`` in input order (batched by prompt length, left-padded).

        ``max_new_tokens``: default 128 per step of the longest solution in the batch, plus 64.
        """
        prompts = self.prompt_ids(records)
        order = sorted(range(len(records)), key=lambda i: len(prompts[i]))
        out: list[CritiqueResult | None] = [None] * len(records)
        starts = range(0, len(order), batch_size)
        if progress:  # a bar in a terminal, a line every 30 s in a log
            from spare_train.progress import track

            starts = track(starts, len(starts), "critiquing")
        for start in starts:
            idx = order[start : start + batch_size]
            budget = max_new_tokens or 128 * max(records[i].num_steps for i in idx) + 64
            texts = self._generate([prompts[i] for i in idx], budget, sample, temperature, top_p)
            for i, (text, gen_ids, logits) in zip(idx, texts, strict=True):
                out[i] = self._read(records[i], text, gen_ids, logits)
        return out  # type: ignore[return-value]

    def _generate(self, prompts: list[list[int]], budget: int, sample: bool, temperature: float, top_p: float) -> list:
        from transformers import LogitsProcessorList

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(prompts):  # left padding: every row's next token is at the end
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        recorder = _VerdictLogits(tuple(self.verdict_ids))
        kwargs: dict[str, Any] = {"do_sample": sample}
        if sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        seqs = self.model.generate(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device), max_new_tokens=budget,
            eos_token_id=tok.eos_token_id, pad_token_id=pad, logits_processor=LogitsProcessorList([recorder]), **kwargs,
        ).cpu()  # fmt: skip
        steps = torch.stack(recorder.steps, dim=1) if recorder.steps else torch.zeros(len(prompts), 0, 2)
        rows = []
        for r in range(len(prompts)):
            gen = seqs[r, width:].tolist()
            if tok.eos_token_id in gen:
                gen = gen[: gen.index(tok.eos_token_id)]
            rows.append((tok.decode(gen), gen, steps[r]))
        return rows

    def _read(self, record: StepRecord, text: str, gen: list[int], logits: torch.Tensor) -> CritiqueResult:
        parsed = self.template.parse(text, record.num_steps)
        n = record.num_steps
        verdicts: list[bool | None] = [None] * n
        scores: list[float | None] = [None] * n
        ends = token_ends(self.tokenizer, gen, text) if parsed.steps else []
        for i, (s, at) in enumerate(zip(parsed.steps, parsed.verdict_offsets, strict=True)):
            verdicts[i] = s.correct
            j = next(j for j, e in enumerate(ends) if e > at) + self.offset
            if j < len(gen) and gen[j] in self.verdict_ids:
                scores[i] = float(torch.softmax(logits[j], -1)[0])
            else:  # the verdict was written with other tokens: its probability is not one of the two
                scores[i] = 1.0 if s.correct else 0.0
        return CritiqueResult(text, verdicts, scores, parsed.error)


def is_critic(path: str | Path) -> bool:
    """Whether ``path`` is a critic or refiner exported by ``spare-train export``."""
    return (Path(path) / INFO_NAME).is_file()


def load_critic(path: str | Path, device: str | None = None, dtype: str | None = None) -> Critic:
    """Load a critic folder written by ``spare-train export`` (merged weights or a peft adapter)."""
    from transformers import AutoTokenizer

    path = Path(path)
    info = json.loads((path / INFO_NAME).read_text())
    if info["mode"] != "critique":
        raise ValueError(f"{path} is a {info['mode']} model, not a critic")
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM as Auto
    else:
        from transformers import AutoModelForCausalLM as Auto
    model = Auto.from_pretrained(path, **kwargs)
    if device:
        model = model.to(device)
    return Critic(model, AutoTokenizer.from_pretrained(path), info)


def summarize(results: list[CritiqueResult]) -> dict[str, Any]:
    """Parse rate and malformed critiques by reason (the reason's text before any quoted line)."""
    bad = [r.error for r in results if r.error is not None]
    reasons = Counter(e.split(":")[0] if e.startswith("line ") else e.split(" (")[0] for e in bad)
    return {"critiques": len(results), "parsed": len(results) - len(bad),
            "parse_rate": (len(results) - len(bad)) / len(results) if results else float("nan"),
            "malformed_by_reason": dict(reasons.most_common())}  # fmt: skip


def critique(
    model: str,
    input: str,
    output: str,
    format: str = "spare",
    reader_options: dict[str, Any] | None = None,
    batch_size: int = 16,
    sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
    seed: int = 0,
    device: str | None = None,
    strict: bool = False,
) -> int:
    """Critique every solution of a file with an exported critic and parse each critique strictly.

    Writes one JSON line per record, in input order: ``id``, ``group_id``, ``verdicts`` (per step
    ``"correct"``, ``"incorrect"`` or ``null`` where the critique did not parse that far),
    ``p_correct`` (per step, P("correct") read at the verdict token), ``first_error`` (0-based,
    -1 for none, ``null`` when malformed), ``malformed`` (``null`` or the reason) and ``critique``
    (the generated text). Malformed critiques are counted and reported, never dropped.

    Args:
        model: critic folder written by ``spare-train export``.
        input: record file, folder of shards or glob.
        output: JSONL file to write.
        format: reader name (spare, critique, stepwise, math_shepherd, prm800k, processbench, gsm8k_solutions).
        reader_options: keyword options of the reader, e.g. ``'{"add_reference": true}'``.
        batch_size: solutions per generate call.
        sample: sample (``temperature``, ``top_p``) instead of greedy decoding.
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        max_new_tokens: generation budget per critique (default: 128 per step + 64).
        seed: torch seed for sampling.
        device: e.g. ``cuda`` (default: cpu).
        strict: stop at the first malformed input record instead of skipping it.
    """
    from spare_train.formats import read_records

    records, report = read_records(format, input, strict=strict, **(reader_options or {}))
    critic = load_critic(model, device=device)
    torch.manual_seed(seed)
    results = critic.critique(records, batch_size, sample, temperature, top_p, max_new_tokens, progress=True)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        for rec, res in zip(records, results, strict=True):
            f.write(json.dumps(res.to_json(rec), ensure_ascii=False) + "\n")
    s = summarize(results)
    print(f"critiqued {s['critiques']} records: {s['parsed']} parsed ({100 * s['parse_rate']:.1f} %), "
          f"{s['critiques'] - s['parsed']} malformed; {len(report.rejected)} records rejected while reading -> {output}",
          file=sys.stderr)  # fmt: skip
    for reason, n in s["malformed_by_reason"].items():
        print(f"  malformed  {reason:<60} {n}", file=sys.stderr)
    return 0
