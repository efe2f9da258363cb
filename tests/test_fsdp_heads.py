"""Both PRM heads under FSDP2 give the unsharded loss and gradients on the same batch (2 gloo
processes in a subprocess; tests/fsdp_heads_worker.py). Before the scoring forward ran inside one
sharded root (:class:`spare_train.prm.heads.StepScorer`), the decoder body and the LM-head rows
were read outside any FSDP forward, i.e. as shards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distributed_helpers import ENV, ROOT
from test_backbone import tiny_folder

pytestmark = pytest.mark.slow

#: |loss difference| and max |gradient difference| relative to the largest gradient entry
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}


def test_both_heads_under_fsdp2_match_one_process(tmp_path):
    folder = tiny_folder(tmp_path / "model")
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "fsdp_heads_worker.py"), folder, str(out)],
                          env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    for name, r in results.items():
        print(name, r)
        tol = TOLERANCE["float32" if "fp32" in name else "bfloat16"]
        assert r["sharded"] == r["params"], name  # every parameter (NF4 weights too) is a shard
        assert abs(r["loss"] - r["want_loss"]) <= tol * max(1.0, abs(r["want_loss"])), (name, r)
        assert r["max_grad_diff"] <= tol * r["max_grad"], (name, r)
