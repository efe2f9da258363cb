"""Data preparation, end to end (read -> labels -> tokenise -> Arrow): records/s and peak memory.

Variants (one child process each; the tokenizer is loaded and ``datasets`` imported before the
clock starts in every variant):

* ``ours``: ``PRMDataModule(format="gsm8k_solutions", label_policy="outcome_only").setup()``
  -- reading, label policy, chat template, tokenisation with tag positions, the Arrow dataset.
* ``trl``: what a TRL user writes for the same file: read the JSON rows, render the chat
  prompt once per question (``apply_chat_template(..., add_generation_prompt=True)``), one row
  per solution (``prompt``, ``completions`` = its lines, ``labels`` = the outcome on every step,
  ``train_on_last_step_only=True``, the supervision of our ``outcome_only``), then
  ``Dataset.from_list(...).map(PRMTrainer.tokenize_row, ...)`` exactly as ``PRMTrainer.__init__``
  calls it (same ``fn_kwargs`` and ``Features``).
* ``limit``: one batched tokenizer call over the finished texts (prompt + steps + tags),
  rendered before the clock starts: tokenising alone, no reading, no labels, no Arrow.

``scaling`` runs ``ours`` on a file of the size asked and reports time per record and the
peak resident set during preparation (``VmHWM`` after resetting it just before ``setup``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from common import CANDIDATE_KEYS, child_main, peak_rss_mib, reset_peak_rss, rss_mib, vm_hwm_mib

MAX_LENGTH = 512


def ours(cfg: dict[str, Any]) -> dict[str, Any]:
    import datasets  # noqa: F401  (imported before the clock in every variant)

    from spare_train.data import PRMDataModule

    dm = PRMDataModule(train=cfg["data"], format="gsm8k_solutions", label_policy="outcome_only",
                       tokenizer=cfg["tokenizer"], val_fraction=0.0, max_length=MAX_LENGTH)  # fmt: skip
    dm.tokenizer  # noqa: B018  (load the tokenizer before the clock, as for the peer)
    rss0, reset = rss_mib(), reset_peak_rss()
    t = time.perf_counter()
    dm.setup("fit")
    seconds = time.perf_counter() - t
    peak = vm_hwm_mib() if reset else peak_rss_mib()
    ds = dm.datasets["train"]
    return {"seconds": seconds, "records": dm.report.read, "examples": len(ds), "rss_before": rss0, "peak_rss": peak,
            "tokens": sum(len(x) for x in ds["input_ids"])}  # fmt: skip


def trl(cfg: dict[str, Any]) -> dict[str, Any]:
    from datasets import Dataset, features
    from transformers import AutoTokenizer
    from trl.experimental.prm import PRMTrainer

    tok = AutoTokenizer.from_pretrained(cfg["tokenizer"])
    rss0, reset = rss_mib(), reset_peak_rss()
    t = time.perf_counter()
    rows = []
    with open(cfg["data"], encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            msgs = [{"role": "user", "content": row["question"].strip()}]
            prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            solutions = [(row[k]["solution"], bool(row[k]["is_correct"])) for k in CANDIDATE_KEYS]
            for text, correct in [*solutions, (row["ground_truth"], True)]:
                steps = [s.strip() for s in text.splitlines() if s.strip()]
                rows.append({"prompt": prompt, "completions": steps, "labels": [correct] * len(steps)})
    ds = Dataset.from_list(rows)
    fn_kwargs = {"tokenizer": tok, "step_separator": "\n", "max_length": MAX_LENGTH, "max_completion_length": None,
                 "train_on_last_step_only": True, "is_eval": False}  # fmt: skip
    ds = ds.map(
        PRMTrainer.tokenize_row, fn_kwargs=fn_kwargs, remove_columns=ds.features,
        features=features.Features({"labels": features.Sequence(features.Value("int64")),
                                    "input_ids": features.Sequence(features.Value("int64"))}),
    )  # fmt: skip
    seconds = time.perf_counter() - t
    peak = vm_hwm_mib() if reset else peak_rss_mib()
    return {"seconds": seconds, "records": len(rows), "examples": len(ds), "rss_before": rss0, "peak_rss": peak,
            "tokens": sum(len(x) for x in ds["input_ids"])}  # fmt: skip


def limit(cfg: dict[str, Any]) -> dict[str, Any]:
    from spare_train.formats import read_records
    from spare_train.tokenize import FormatConfig, load_tokenizer, prepare_tokenizer, render_text

    tok = load_tokenizer(cfg["tokenizer"])
    fc = FormatConfig(max_length=MAX_LENGTH)
    prepare_tokenizer(tok, fc)
    records, _ = read_records("gsm8k_solutions", cfg["data"])
    texts = [render_text(r, tok, fc) for r in records]
    t = time.perf_counter()
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "records": len(records), "examples": len(ids), "tokens": sum(map(len, ids))}


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    fn = {"ours": ours, "scaling": ours, "trl": trl, "limit": limit}[cfg["variant"]]
    return {"variant": cfg["variant"], **fn(cfg)}


if __name__ == "__main__":
    child_main(measure)
