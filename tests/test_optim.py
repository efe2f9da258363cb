"""The optimiser builder: fused AdamW where torch has the kernel, the 8-bit options, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from spare_train.models.optim import OptimConfig, build_optimizer

ROOT = Path(__file__).resolve().parents[1]


def named(device: str = "cpu") -> list[tuple[str, torch.nn.Parameter]]:
    g = torch.Generator().manual_seed(0)
    shapes = {"embed.weight": (50, 8), "layer.weight": (8, 8), "layer.bias": (8,), "norm.weight": (8,)}
    return [(n, torch.nn.Parameter(torch.randn(*s, generator=g).to(device))) for n, s in shapes.items()]


def test_adamw_runs_the_fused_kernel_on_cpu():
    """The per-tensor loop torch uses on CPU otherwise spent ~10x longer on a 151k-row embedding."""
    opt = build_optimizer(named(), OptimConfig(weight_decay=0.1))
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"] is True
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # decay on matrices only


def test_adamw_is_not_fused_where_torch_has_no_kernel():
    opt = build_optimizer(named("meta"), OptimConfig())
    assert not opt.defaults.get("fused")


def test_fused_adamw_takes_the_steps_of_the_per_tensor_loop(monkeypatch):
    import spare_train.models.optim as optim

    cfg = OptimConfig(lr=1e-2, weight_decay=0.1)
    fused, loop = named(), named()
    monkeypatch.setattr(optim, "_fused_ok", lambda groups: False)
    opt_loop = build_optimizer(loop, cfg)
    monkeypatch.undo()
    opt_fused = build_optimizer(fused, cfg)
    assert opt_fused.defaults["fused"] and not opt_loop.defaults.get("fused")
    for step in range(3):
        for (_, a), (_, b) in zip(fused, loop):
            a.grad = torch.full_like(a, 0.1 * (step + 1)) + a.detach() ** 2
            b.grad = a.grad.clone()
        opt_fused.step()
        opt_loop.step()
    for (_, a), (_, b) in zip(fused, loop):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_options_build_bitsandbytes_optimizers_that_step(name):
    bnb = pytest.importorskip("bitsandbytes")
    params = named()
    opt = build_optimizer(params, OptimConfig(optimizer=name))
    assert type(opt) is {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[name]
    before = params[0][1].detach().clone()
    for _, p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert not torch.equal(params[0][1].detach(), before)


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import lightning as L, torch
    from spare_train.data import PRMDataModule
    from spare_train.prm import PRMModule

    dm = PRMDataModule(train=sys.argv[1], tokenizer="tiny", batch_size=4, val_fraction=0.0)
    module = PRMModule(lr=1e-3, scheduler="constant")
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, dm)
    opt = trainer.optimizers[0]
    out = {"fused": opt.defaults.get("fused"), "backend": trainer.strategy.process_group_backend,
           "checksum": float(sum(p.detach().double().sum() for p in module.parameters()))}
    with open(f"{sys.argv[2]}/rank{trainer.global_rank}.json", "w") as f:
        json.dump(out, f)
    """
)


@pytest.mark.slow
def test_fused_adamw_under_two_process_ddp_keeps_replicas_equal(tmp_path):
    from spare_train.synth import SynthConfig, generate, write_jsonl

    data = write_jsonl(generate(SynthConfig(num_questions=20, seed=1)), tmp_path / "train.jsonl")
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), str(data), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["fused"] is True and r["backend"] == "gloo" for r in ranks)
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], abs=1e-9)
