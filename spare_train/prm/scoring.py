"""Score step-annotated records with an exported PRM: ``load_prm(path).score(records)``.

Formatting is :func:`spare_train.tokenize.tokenize_records` with the format stored in the export's
``spare_prm.json``, batching is :class:`spare_train.data.StepCollator`, and the scores come from
the same heads as in training -- one code path, so scores match the trained module exactly.
Weights load from safetensors only (``use_safetensors=True``): no pickle is ever unpickled.

A step that did not fit ``max_length`` is **unscored**: its score is ``None`` (``null`` in JSON),
and every metric leaves it out and counts it (:mod:`spare_train.prm.metrics`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spare_train.records import Prompt, StepRecord

#: a list of per-step scores; ``None`` marks a step cut by ``max_length`` (unscored)
StepScores = list[float | None]


class PRM:
    """A loaded PRM: ``score(records)`` -> one P(correct) per step (``None`` for unscored steps)."""

    def __init__(self, model: Any, head: nn.Module, tokenizer: Any, format_config: Any, tag_id: int) -> None:
        self.model, self.head, self.tokenizer = model.eval(), head, tokenizer
        self.format_config, self.tag_id = format_config, tag_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def score(self, records: list[StepRecord], batch_size: int = 16, progress: bool = False) -> list[StepScores]:
        """Scores of every step of every record, in input order (``None``: cut by ``max_length``)."""
        from spare_train.data.prm import StepCollator
        from spare_train.prm.heads import step_logits, step_scores
        from spare_train.report import Report
        from spare_train.tokenize import tokenize_records

        keyed = [replace(r, id=str(i)) for i, r in enumerate(records)]  # ids may repeat; positions do not
        examples = tokenize_records(keyed, self.tokenizer, self.format_config, Report(), self.tag_id)
        examples.sort(key=lambda e: len(e["input_ids"]))  # less padding
        out: list[StepScores] = [[None] * len(r.steps) for r in records]
        collate = StepCollator(self.tokenizer.pad_token_id)
        starts = range(0, len(examples), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="scoring", unit="batch", mininterval=10.0)
        for start in starts:
            chunk = examples[start : start + batch_size]
            batch = collate(chunk)
            tensors = {k: v.to(self.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            scores = step_scores(step_logits(self.model, self.head, tensors)).cpu()
            for row, ex in zip(scores, chunk):
                out[int(ex["id"])][: ex["num_steps"]] = row[: ex["num_steps"]].tolist()
        return out

    def score_text(
        self, question: str, steps: list[str], instruction: str = "", context: str = ""
    ) -> StepScores:
        """Scores of one solution given as plain strings."""
        record = StepRecord(id="0", group_id="0", prompt=Prompt(question, instruction, context), steps=steps,
                            labels=[None] * len(steps))  # fmt: skip
        return self.score([record])[0]


def load_prm(path: str | Path, device: str | None = None, dtype: str | None = None) -> PRM:
    """Load a folder written by ``spare-train export`` (merged weights or a peft adapter)."""
    from transformers import AutoTokenizer

    from spare_train.prm.export import CARD_NAME
    from spare_train.prm.heads import get_head
    from spare_train.tokenize import FormatConfig

    path = Path(path)
    info = json.loads((path / CARD_NAME).read_text())
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model, head = get_head(info["head"]).load(path, info, tokenizer, kwargs)
    if device:
        model = model.to(device)
    return PRM(model, head, tokenizer, FormatConfig(**info["format"]), info["tag_id"])


def score(
    model: str,
    input: str,
    output: str,
    format: str = "spare",
    reader_options: dict[str, Any] | None = None,
    aggregate: str = "min",
    batch_size: int = 16,
    device: str | None = None,
    strict: bool = False,
) -> int:
    """Score step-annotated records with an exported PRM.

    Writes one JSON line per record, in input order: ``{"id", "step_scores", "score"}``. A step
    cut by the model's ``max_length`` gets ``null`` and ``score`` aggregates the scored steps.

    Args:
        model: folder written by ``spare-train export``.
        input: record file, folder of shards or glob.
        output: JSONL file to write.
        format: reader name (spare, stepwise, math_shepherd, prm800k, processbench, gsm8k_solutions, critique).
        reader_options: keyword options of the reader, e.g. ``'{"add_reference": true}'``.
        aggregate: solution score from step scores: min, prod, last or mean.
        batch_size: solutions per forward pass.
        device: e.g. ``cuda`` (default: cpu).
        strict: stop at the first malformed record instead of skipping it.
    """
    from spare_train.formats import read_records
    from spare_train.records import aggregate as agg

    records, report = read_records(format, input, strict=strict, **(reader_options or {}))
    prm = load_prm(model, device=device)
    scores = prm.score(records, batch_size=batch_size, progress=True)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        for rec, s in zip(records, scores, strict=True):
            total = agg([x for x in s if x is not None], aggregate)
            row = {"id": rec.id, "step_scores": s, "score": None if total != total else total}
            f.write(json.dumps(row) + "\n")
    unscored = sum(x is None for s in scores for x in s)
    print(f"scored {len(records)} records ({unscored} steps unscored, cut by max_length; "
          f"{len(report.rejected)} records rejected while reading) -> {output}")  # fmt: skip
    return 0
