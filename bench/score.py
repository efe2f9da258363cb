"""Scoring throughput: records/s of ``spare-train score`` vs the transformers loops a user writes.

The PRM is a head-A export (``spare-train export`` layout: causal LM + tokenizer with the tag +
``spare_prm.json``) of the random Llama of bench/prm_train.py. Variants, one child each; the
clock covers reading the GSM8K file, loading model and tokenizer, scoring and writing one JSON
line per record (interpreter start-up and imports are outside it for all):

* ``ours``: ``spare_train.cli.main(["score", ...])`` -- the command itself (batch 16).
* ``naive_loop``: one record at a time, as the exported model card shows:
  ``model(ids).logits[0][:, [neg, pos]].softmax(-1)[:, 1]`` at the tag positions.
* ``naive_batched``: the same in batches of 16 records in file order, right-padded by the
  tokenizer.

Both naive loops build the text with :func:`spare_train.tokenize.render_text` (the text the
model was trained on; it tokenises to the training ids) and read the file with the same reader.
"""

from __future__ import annotations

import json
import time
from typing import Any

from common import child_main

BATCH = 16


def export(cfg: dict[str, Any]) -> dict[str, Any]:
    """Write the PRM folder scored by every variant (run once, before the timed runs)."""
    from spare_train.models.backbone import BackboneConfig
    from spare_train.prm import PRMModule
    from spare_train.prm.export import export_module

    module = PRMModule(backbone=BackboneConfig(name_or_path=cfg["model"]), tokenizer=cfg["tokenizer"])
    module.configure_model()
    export_module(module.eval(), cfg["out"])
    return {"exported": cfg["out"]}


def ours(cfg: dict[str, Any]) -> float:
    from spare_train.cli import main

    t = time.perf_counter()
    rc = main(["score", "--model", cfg["prm"], "--input", cfg["data"], "--format", "gsm8k_solutions",
               "--output", cfg["out"], "--batch_size", str(BATCH)])  # fmt: skip
    assert rc == 0
    return time.perf_counter() - t


def naive(cfg: dict[str, Any], batched: bool) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spare_train.formats import read_records
    from spare_train.tokenize import FormatConfig, render_text

    t = time.perf_counter()
    info = json.loads(open(f"{cfg['prm']}/spare_prm.json").read())
    neg, pos = info["label_token_ids"]
    tok = AutoTokenizer.from_pretrained(cfg["prm"])
    model = AutoModelForCausalLM.from_pretrained(cfg["prm"]).eval()
    records, _ = read_records("gsm8k_solutions", cfg["data"])
    fmt = FormatConfig(**info["format"])
    texts = [render_text(r, tok, fmt) for r in records]
    size = BATCH if batched else 1
    with open(cfg["out"], "w") as f, torch.no_grad():
        for start in range(0, len(texts), size):
            enc = tok(texts[start : start + size], return_tensors="pt", padding=batched, add_special_tokens=False)
            probs = model(**enc).logits[..., [neg, pos]].softmax(-1)[..., 1]
            for row, ids, rec in zip(probs, enc["input_ids"], records[start : start + size]):
                scores = row[ids == info["tag_id"]].tolist()
                f.write(json.dumps({"id": rec.id, "step_scores": scores, "score": min(scores)}) + "\n")
    return time.perf_counter() - t


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    v = cfg["variant"]
    if v == "export":
        return export(cfg)
    seconds = ours(cfg) if v == "ours" else naive(cfg, batched=v == "naive_batched")
    with open(cfg["out"]) as f:
        rows = [json.loads(line) for line in f]
    steps = sum(len(r["step_scores"]) for r in rows)
    return {"variant": v, "seconds": seconds, "records": len(rows), "records_per_s": len(rows) / seconds,
            "steps": steps, "score_sum": sum(s for r in rows for s in r["step_scores"] if s is not None)}  # fmt: skip


if __name__ == "__main__":
    child_main(measure)
