"""The benchmark harness (bench/run.py) end to end on the smoke size, without the peer.

No timing is asserted: this checks that every benchmark script runs and that the driver turns
their results into the table docs/benchmarks.md holds (see ``make bench`` for the real run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_harness_runs_every_section_on_a_tiny_size(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}  # fmt: skip
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--size", "smoke", "--data", "synthetic", "--repeats", "1",
           "--no-peer", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "table.md").read_text()
    assert table.strip() in proc.stdout
    for bench in ("1 data prep", "2 PRM training", "3 scoring", "4 DPO, LoRA", "5 scaling", "optimizer step"):
        assert f"| {bench} |" in table, bench
    assert "TRL" not in table  # the peer columns are skipped without it
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert set(results) >= {"prep", "train", "train_memory", "score", "dpo", "scaling", "rss", "optim"}
    for run in results["train"]["ours_a_packed"]:
        assert 0 < run["padding_efficiency"] <= 1 and run["tokens"] > 0
    # ours and the plain transformers loop score the same records alike (same model, same text)
    ours, naive = results["score"]["ours"][0], results["score"]["naive_loop"][0]
    assert ours["records"] == naive["records"] and ours["score_sum"] == pytest.approx(naive["score_sum"], rel=1e-3)


def test_bench_skips_cleanly_without_the_gsm8k_file(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--gsm8k", str(tmp_path / "absent"), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "skipping the benchmarks" in proc.stdout
