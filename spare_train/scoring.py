"""Score step-annotated records with an exported PRM: ``load_prm(path).score(records)``.

Formatting is :func:`spare_train.tokenize.tokenize_records` with the format stored in the export's
``spare_prm.json``, batching is :class:`spare_train.data.StepCollator`, and the scores come from
the same heads as in training -- one code path, so scores match the trained module exactly.
Weights load from safetensors only (``use_safetensors=True``): no pickle is ever unpickled.

``spare-train score --model OUT --input FILE [--format NAME] --output SCORES.jsonl
[--aggregate min|prod|last|mean]`` writes one line per record, in input order:
``{"id", "step_scores", "score"}``. A step that did not fit ``max_length`` gets ``null``, and
``score`` aggregates the scored steps.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spare_train.records import Prompt, StepRecord


class PRM:
    """A loaded PRM: ``score(records)`` -> one P(correct) per step (NaN for steps cut by ``max_length``)."""

    def __init__(self, model: Any, head: nn.Module, tokenizer: Any, format_config: Any, tag_id: int) -> None:
        self.model, self.head, self.tokenizer = model.eval(), head, tokenizer
        self.format_config, self.tag_id = format_config, tag_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def score(self, records: list[StepRecord], batch_size: int = 16) -> list[list[float]]:
        from spare_train.data import StepCollator
        from spare_train.heads import step_logits, step_scores
        from spare_train.report import Report
        from spare_train.tokenize import tokenize_records

        keyed = [replace(r, id=str(i)) for i, r in enumerate(records)]  # ids may repeat; positions do not
        examples = tokenize_records(keyed, self.tokenizer, self.format_config, Report(), self.tag_id)
        examples.sort(key=lambda e: len(e["input_ids"]))  # less padding
        out: list[list[float]] = [[math.nan] * len(r.steps) for r in records]
        collate = StepCollator(self.tokenizer.pad_token_id)
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            batch = collate(chunk)
            tensors = {k: v.to(self.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            scores = step_scores(step_logits(self.model, self.head, tensors)).cpu()
            for row, ex in zip(scores, chunk):
                out[int(ex["id"])][: ex["num_steps"]] = row[: ex["num_steps"]].tolist()
        return out

    def score_text(
        self, question: str, steps: list[str], instruction: str = "", context: str = ""
    ) -> list[float]:
        """Scores of one solution given as plain strings."""
        record = StepRecord(id="0", group_id="0", prompt=Prompt(question, instruction, context), steps=steps,
                            labels=[None] * len(steps))  # fmt: skip
        return self.score([record])[0]


def load_prm(path: str | Path, device: str | None = None, dtype: str | None = None) -> PRM:
    """Load a folder written by ``spare-train export`` (merged weights or a peft adapter)."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    from spare_train.backbone import unwrap
    from spare_train.export import CARD_NAME
    from spare_train.heads import ClassifierHead, LMTokenHead
    from spare_train.tokenize import FormatConfig

    path = Path(path)
    info = json.loads((path / CARD_NAME).read_text())
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if info["head"] == "lm_tokens":
        if info["adapter"]:
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        head: nn.Module = LMTokenHead(*info["label_token_ids"])
    else:
        import spare_train.modeling_prm  # noqa: F401  (registers the MLP-head class)

        if info["adapter"]:
            model = _classifier_adapter(path, len(tokenizer), kwargs)
        else:
            model = AutoModelForTokenClassification.from_pretrained(path, **kwargs)
        head = ClassifierHead.wrap(_active(unwrap(model).score))
    if device:
        model = model.to(device)
    return PRM(model, head, tokenizer, FormatConfig(**info["format"]), info["tag_id"])


def _classifier_adapter(path: Path, vocab: int, kwargs: dict[str, Any]) -> Any:
    """A head-B adapter: its base built as the saved token-classifier config, embeddings grown, then peft."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoConfig, AutoModelForTokenClassification

    base_path = PeftConfig.from_pretrained(path).base_model_name_or_path
    base = AutoModelForTokenClassification.from_pretrained(base_path, config=AutoConfig.from_pretrained(path), **kwargs)
    if vocab > base.get_input_embeddings().num_embeddings:  # only grow, as AutoPeftModel does
        base.resize_token_embeddings(vocab)
    return PeftModel.from_pretrained(base, path)


def _active(module: nn.Module) -> nn.Module:
    """The adapter's own copy inside a peft ``ModulesToSaveWrapper``, else ``module`` itself."""
    copies = getattr(module, "modules_to_save", None)
    return copies[module.active_adapters[0]] if copies is not None else module


def _json_scores(scores: list[float]) -> list[float | None]:
    return [None if math.isnan(s) else s for s in scores]


def main(argv: list[str] | None = None) -> int:
    from spare_train.formats import read_records
    from spare_train.metrics import aggregate

    p = argparse.ArgumentParser(prog="spare-train score", description="Score step-annotated records with an exported PRM.")
    p.add_argument("--model", required=True, help="folder written by `spare-train export`")
    p.add_argument("--input", required=True, nargs="+", help="record files (file, folder, glob)")
    p.add_argument("--format", default="spare", help="reader name (default: spare)")
    p.add_argument("--output", required=True, help="JSONL of {id, step_scores, score}, in input order")
    p.add_argument("--aggregate", default="min", choices=["min", "prod", "last", "mean"], help="solution score")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="e.g. cuda (default: cpu)")
    args = p.parse_args(argv)

    records, report = read_records(args.format, args.input if len(args.input) > 1 else args.input[0])
    prm = load_prm(args.model, device=args.device)
    scores = prm.score(records, batch_size=args.batch_size)
    with open(args.output, "w", encoding="utf-8") as f:
        for rec, s in zip(records, scores):
            kept = [x for x in s if not math.isnan(x)]
            total = aggregate(kept, args.aggregate)
            row = {"id": rec.id, "step_scores": _json_scores(s), "score": None if math.isnan(total) else total}
            f.write(json.dumps(row) + "\n")
    print(f"scored {len(records)} records ({len(report.rejected)} rejected while reading) -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
