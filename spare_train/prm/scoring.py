"""Score step-annotated records with an exported PRM: ``load_prm(path).score(records)``.

Formatting is :func:`spare_train.tokenize.tokenize_records` with the format stored in the export's
``spare_prm.json``, batching is :class:`spare_train.data.StepCollator`, and the scores come from
the same heads as in training -- one code path, so scores match the trained module exactly.
Weights load from safetensors only (``use_safetensors=True``): no pickle is ever unpickled.

A step that did not fit ``max_length`` is **unscored**: its score is ``None`` (``null`` in JSON),
and every metric leaves it out and counts it (:mod:`spare_train.prm.metrics`).

A folder is data, not code: code it ships (``auto_map``) runs only with the caller's explicit
``trust_remote_code``. A model that cannot produce finite scores is an error
(:func:`check_scores`), never a file of NaN scores: ``score`` and ``evaluate`` exit non-zero.
``records`` can be :class:`~spare_train.records.StepRecord` objects, dicts (the record format
``spare-train data convert`` writes; only ``prompt`` or ``question``, and ``steps``, are
required), or a path read with a reader (:func:`as_records`)::

    prm = load_prm("prm-out")
    prm.score([{"question": "Start with 3. Add 2. What is the result?", "steps": ["3 + 2 = 5", "The answer is 5."]}])
    prm.score("data/synth/test.jsonl")              # format="spare" by default
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spare_train.records import Prompt, StepRecord
from spare_train.report import DataError

#: a list of per-step scores; ``None`` marks a step cut by ``max_length`` (unscored)
StepScores = list[float | None]
#: what :meth:`PRM.score` accepts
Records = list[StepRecord] | list[dict[str, Any]] | str | Path


def as_records(records: Records, format: str = "spare", reader_options: dict[str, Any] | None = None) -> list[StepRecord]:
    """``records`` as StepRecords: StepRecords as they are; a dict in the record format ``data
    convert`` writes (``id``, ``group_id`` and ``labels`` may be left out, and ``prompt`` given as
    ``question`` / ``instruction`` / ``context`` keys); a path (file, folder of shards, glob) read
    with reader ``format`` (its kept records, in file order). Anything else is a ``TypeError``."""
    if isinstance(records, (str, Path)):
        from spare_train.formats import read_records

        return read_records(format, str(records), **(reader_options or {}))[0]
    if isinstance(records, (StepRecord, dict)) or not isinstance(records, (list, tuple)):
        raise TypeError(f"records must be a list of StepRecords or dicts, or a path; got {type(records).__name__}")
    out = []
    for i, r in enumerate(records):
        if isinstance(r, StepRecord):
            out.append(r)
            continue
        if not isinstance(r, dict) or not isinstance(r.get("steps"), list) or not ("prompt" in r or "question" in r):
            raise TypeError(f"records[{i}] must be a StepRecord or a dict with 'steps' (a list) and 'prompt' or "
                            f"'question'; got {type(r).__name__}{' with keys ' + str(sorted(r)) if isinstance(r, dict) else ''}")  # fmt: skip
        d = {"id": str(i), "group_id": str(i), "labels": [None] * len(r["steps"]), **r}
        if "prompt" not in d:
            d["prompt"] = {k: d.pop(k) for k in ("question", "instruction", "context") if k in d}
        out.append(StepRecord.from_dict(d))
    return out


class PRM:
    """A loaded PRM: ``score(records)`` -> one P(correct) per step (``None`` for unscored steps)."""

    def __init__(self, model: Any, head: nn.Module, tokenizer: Any, format_config: Any, tag_id: int) -> None:
        self.model, self.head, self.tokenizer = model.eval(), head, tokenizer
        self.format_config, self.tag_id = format_config, tag_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def score(
        self,
        records: Records,
        batch_size: int = 16,
        progress: bool = False,
        format: str = "spare",
        report: Any = None,
    ) -> list[StepScores]:
        """Scores of every step of every record, in input order (``None``: cut by ``max_length``).

        ``records``: StepRecords, dicts or a path (read with reader ``format``); see :func:`as_records`.
        ``progress``: show a bar in a terminal, a line every 30 s otherwise (:func:`spare_train.progress.track`).
        ``report``: a :class:`~spare_train.report.Report` that receives the tokenizer's repairs and
        the records it could not format (their steps stay ``None``).
        """
        from spare_train.data.prm import StepCollator
        from spare_train.prm.heads import step_logits, step_scores
        from spare_train.report import Report
        from spare_train.tokenize import tokenize_records

        records = as_records(records, format)
        keyed = [replace(r, id=str(i)) for i, r in enumerate(records)]  # ids may repeat; positions do not
        report = report if report is not None else Report()
        examples = tokenize_records(keyed, self.tokenizer, self.format_config, report, self.tag_id)
        examples.sort(key=lambda e: len(e["input_ids"]))  # less padding
        out: list[StepScores] = [[None] * len(r.steps) for r in records]
        collate = StepCollator(self.tokenizer.pad_token_id)
        starts: Any = range(0, len(examples), batch_size)
        if progress:
            from spare_train.progress import track

            starts = track(starts, len(starts), "scoring")
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


def check_prm_folder(path: str | Path) -> Path:
    """``path`` if it is a folder written by ``spare-train export`` of a PRM, else a ``DataError``."""
    from spare_train.prm.export import CARD_NAME

    path = Path(path)
    if not (path / CARD_NAME).is_file():
        what = "no such folder" if not path.exists() else "not a folder" if not path.is_dir() else f"no {CARD_NAME} in it"
        raise DataError("not_a_prm", f"{what}: give a folder written by `spare-train export` of a PRM checkpoint", str(path))
    return path


def load_prm(
    path: str | Path, device: str | None = None, dtype: str | None = None, trust_remote_code: bool = False
) -> PRM:
    """Load a folder written by ``spare-train export`` (merged weights or a peft adapter).

    ``trust_remote_code``: run code the folder (or an adapter's base model) ships; off unless the
    caller says so, whatever the folder's files ask for.
    """
    from transformers import AutoTokenizer

    from spare_train.prm.export import CARD_NAME
    from spare_train.prm.heads import get_head
    from spare_train.tokenize import FormatConfig

    path = check_prm_folder(path)
    info = json.loads((path / CARD_NAME).read_text())
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model, head = get_head(info["head"]).load(path, info, tokenizer, kwargs)
    if device:
        model = model.to(device)
    return PRM(model, head, tokenizer, FormatConfig(**info["format"]), info["tag_id"])


def check_scores(scores: list[StepScores], model: str) -> int:
    """The number of unscored (``None``) steps; raises :class:`~spare_train.models.finite.NonFiniteError`
    when a scored step is NaN or infinite (a broken model must not pass for a low or high score)."""
    from spare_train.models.finite import NonFiniteError

    values = [x for s in scores for x in s if x is not None]
    bad = sum(not math.isfinite(x) for x in values)
    if bad:
        raise NonFiniteError("nonfinite_scores", f"{bad} of {len(values)} step scores are not finite: the model's "
                             "weights or its input are broken; no scores or metrics are written", model)  # fmt: skip
    return sum(x is None for s in scores for x in s)


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
    trust_remote_code: bool = False,
) -> int:
    """Score step-annotated records with an exported PRM.

    Writes one JSON line per record, in input order: ``{"id", "step_scores", "score"}``. A step
    cut by the model's ``max_length`` gets ``null`` and ``score`` aggregates the scored steps. A
    model that cannot produce finite scores writes nothing and exits 1.

    Args:
        model: folder written by ``spare-train export``.
        input: record file, folder of shards or glob.
        output: JSONL file to write.
        format: reader name (spare, stepwise, math_shepherd, prm800k, processbench, gsm8k_solutions,
            records, critique).
        reader_options: keyword options of the reader, e.g. ``'{"add_reference": true}'``.
        aggregate: solution score from step scores: min, prod, last or mean.
        batch_size: solutions per forward pass.
        device: e.g. ``cuda`` (default: cpu).
        strict: stop at the first malformed record instead of skipping it.
        trust_remote_code: run code shipped with the model folder (off: a folder is data).
    """
    from spare_train.files import atomic_path
    from spare_train.formats import read_records
    from spare_train.records import aggregate as agg
    from spare_train.report import Report

    check_prm_folder(model)  # a wrong folder fails before the data is read
    records, report = read_records(format, input, strict=strict, **(reader_options or {}))
    print(report.summary(), file=sys.stderr)
    report.check_kept(input)
    prm = load_prm(model, device=device, trust_remote_code=trust_remote_code)
    formatting = Report(strict=strict)
    scores = prm.score(records, batch_size=batch_size, progress=True, report=formatting)
    unscored = check_scores(scores, model)
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec, s in zip(records, scores, strict=True):
            total = agg([x for x in s if x is not None], aggregate)
            row = {"id": rec.id, "step_scores": s, "score": None if total != total else total}
            f.write(json.dumps(row) + "\n")
    print(f"scored {len(records)} records ({unscored} steps unscored, cut by max_length; "
          f"{len(report.rejected)} records rejected while reading) -> {output}")  # fmt: skip
    if formatting.rejected or formatting.repaired:
        print(f"formatting: {formatting.summary()}")
    return 0
