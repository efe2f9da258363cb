"""Export -> from_pretrained -> the same step scores as the trained Lightning module.

Covers head A (merged and adapter, loaded as AutoModelForCausalLM / AutoPeftModelForCausalLM),
linear head B (AutoModelForTokenClassification) and the MLP head B (SparePRMForTokenClassification),
both head-B kinds as TOKEN_CLS peft adapters (AutoPeftModelForTokenClassification / PeftModel),
the model card's plain-transformers snippet, and a QLoRA checkpoint exported unquantised.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from test_backbone import tiny_folder
from test_prm import loader, records, trainer

from spare_train.cli import main as cli
from spare_train.models.backbone import BackboneConfig, LoraSettings
from spare_train.models.hf import load_checkpoint, resolve_base
from spare_train.prm import PRMModule
from spare_train.prm.card import EXAMPLE
from spare_train.prm.export import module_from_checkpoint
from spare_train.prm.scoring import PRM, load_prm
from spare_train.tokenize import render_text


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("tiny"))


def train_and_save(path, **module_kw) -> PRMModule:
    L.seed_everything(0)
    module = PRMModule(lr=1e-2, scheduler="constant", **module_kw)
    t = trainer(max_steps=3)
    t.fit(module, loader(module, n=4))
    t.save_checkpoint(path)
    return module


def module_scores(module: PRMModule) -> list[list[float]]:
    tag = module.tokenizer.encode(module.format_config.step_tag, add_special_tokens=False)[0]
    return PRM(module.model, module.head, module.tokenizer, module.format_config, tag).score(records(4))


def main(argv: list[str]) -> int:
    """``spare-train export ARGV``."""
    return cli(["export", *argv])


def card_snippet(folder) -> str:
    card = (folder / "README.md").read_text()
    return re.search(r"## Scoring with plain transformers\n\n.*?```python\n(.*?)```", card, re.S).group(1)


def assert_close(a, b, tol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=tol)


@pytest.fixture(scope="module")
def lora_run(folder, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "lora.ckpt"
    bb = BackboneConfig(name_or_path=folder, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    module = train_and_save(path, backbone=bb)
    return path, module, module_scores(module)


@pytest.mark.slow
@pytest.mark.parametrize("merge", [True, False])
def test_head_a_export_matches_module(lora_run, tmp_path, merge):
    from transformers import AutoModelForCausalLM

    ckpt, module, want = lora_run
    main([str(ckpt), str(tmp_path), *(["--merge"] if merge else [])])
    info = json.loads((tmp_path / "spare_prm.json").read_text())
    assert info["adapter"] is not merge and info["label_tokens"] == ["-", "+"]
    assert (tmp_path / ("model.safetensors" if merge else "adapter_model.safetensors")).exists()
    if merge:
        assert type(AutoModelForCausalLM.from_pretrained(tmp_path)).__name__ == "LlamaForCausalLM"
    else:
        assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"]
    prm = load_prm(tmp_path)
    assert len(prm.tokenizer) == len(module.tokenizer)
    assert_close(prm.score(records(4)), want)


@pytest.mark.slow
@pytest.mark.parametrize("merge", [True, False], ids=["merged", "adapter"])
def test_model_card_snippet_runs_as_copied_in_a_clean_process(lora_run, tmp_path, merge):
    """The card's snippet is a whole script: run verbatim in a fresh interpreter without
    spare-train's help, it prints the same step scores as `spare-train score` (merged weights, and
    an adapter whose base the snippet loads itself)."""
    import subprocess
    import sys

    ckpt, module, _ = lora_run
    out = tmp_path / "prm"
    main([str(ckpt), str(out), *(["--merge"] if merge else [])])
    assert (out / "adapter_config.json").exists() is not merge
    snippet = card_snippet(out)
    assert "spare_train" not in snippet
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    src = tmp_path / "example.jsonl"
    prompt = [{"role": "system", "content": EXAMPLE["instruction"]}, {"role": "user", "content": EXAMPLE["question"]}]
    src.write_text(json.dumps({"id": "x", "prompt": prompt, "completions": EXAMPLE["steps"], "labels": [True] * 3}))
    assert cli(["score", "--model", str(out), "--input", str(src), "--format", "stepwise",
                "--output", str(tmp_path / "s.jsonl")]) == 0  # fmt: skip
    want = json.loads((tmp_path / "s.jsonl").read_text())["step_scores"]
    assert len(printed) == len(EXAMPLE["steps"]) == len(want)
    assert_close(printed, want)


@pytest.mark.slow
def test_export_refuses_a_full_folder_and_overwrite_replaces_it_cleanly(lora_run, tmp_path, monkeypatch, capsys):
    """No export writes over other files; --overwrite replaces an earlier export completely (an
    adapter over a merged export leaves no stale model.safetensors); every file is world-readable."""
    import os
    import stat

    ckpt, _, want = lora_run
    out = tmp_path / "prm"
    assert main([str(ckpt), str(out), "--merge"]) == 0
    assert main([str(ckpt), str(out)]) == 1
    assert "not empty" in capsys.readouterr().err and (out / "model.safetensors").exists()
    assert main([str(ckpt), str(out), "--overwrite"]) == 0
    assert not (out / "model.safetensors").exists() and (out / "adapter_model.safetensors").exists()
    assert_close(load_prm(out).score(records(4)), [w for w in want])
    umask = os.umask(0)
    os.umask(umask)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in out.rglob("*") if f.is_file()}
    assert set(modes.values()) == {0o666 & ~umask}, modes
    mine = tmp_path / "notes"  # not an export: never emptied, --overwrite or not
    mine.mkdir()
    (mine / "README.md").write_text("mine")
    assert main([str(ckpt), str(mine), "--overwrite"]) == 1
    monkeypatch.chdir(out)  # nor the folder a user stands in
    assert main([str(ckpt), ".", "--overwrite"]) == 1
    assert "is not" in capsys.readouterr().err
    assert (mine / "README.md").read_text() == "mine" and (out / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_adapter_names_its_base_portably(folder, tmp_path):
    """A bundled base is named `tiny-llama`, a local base by a path relative to the export; the
    export still loads when both move together (another machine's layout)."""
    import shutil

    from spare_train.prm.export import export_module

    for base in ("tiny-llama", "local"):
        root = tmp_path / base / "a"
        name = "tiny-llama"
        if base == "local":
            shutil.copytree(folder, root / "base")
            name = str(root / "base")
        module = PRMModule(backbone=BackboneConfig(name_or_path=name, lora=LoraSettings(r=4, alpha=8, dropout=0.0)),
                           tokenizer=name if base == "local" else "tiny")  # fmt: skip
        module.configure_model()
        want = module_scores(module.eval())
        export_module(module, root / "prm", merge=False)
        recorded = json.loads((root / "prm" / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert recorded == {"tiny-llama": "tiny-llama", "local": "../base"}[base]
        assert json.loads((root / "prm" / "spare_prm.json").read_text())["base_model"] == recorded
        moved = tmp_path / base / "b"
        root.rename(moved)  # the old absolute path no longer exists
        for got, w in zip(load_prm(moved / "prm").score(records(4)), want):
            assert_close(got, w)


@pytest.mark.slow
@pytest.mark.parametrize("kind,cls", [("linear", "LlamaForTokenClassification"), ("mlp", "SparePRMForTokenClassification")])
def test_head_b_export_loads_as_token_classifier(folder, tmp_path, kind, cls):
    from transformers import AutoModelForTokenClassification

    bb = BackboneConfig(name_or_path=folder, lora=LoraSettings(r=4, alpha=8, dropout=0.0) if kind == "mlp" else None)
    module = train_and_save(tmp_path / "b.ckpt", backbone=bb, head="classifier", classifier_type=kind)
    want = module_scores(module)
    out = tmp_path / "out"
    main([str(tmp_path / "b.ckpt"), str(out), "--merge"])
    if kind == "mlp":
        import spare_train.prm.modeling  # noqa: F401
    model = AutoModelForTokenClassification.from_pretrained(out)
    assert type(model).__name__ == cls
    assert_close(load_prm(out).score(records(4)), want)
    # the plain forward pass agrees too (softmax of per-token logits at the tags)
    prm = load_prm(out)
    rec = records(4)[1]
    ids = prm.tokenizer(render_text(rec, prm.tokenizer, prm.format_config), return_tensors="pt",
                        add_special_tokens=False).input_ids  # fmt: skip
    with torch.no_grad():
        probs = model(ids).logits[0].softmax(-1)[:, 1]
    assert_close(probs[ids[0] == prm.tag_id].tolist(), want[1])
    if bb.lora is not None:  # the same LoRA checkpoint as an adapter (no --merge) scores the same
        main([str(tmp_path / "b.ckpt"), str(tmp_path / "adapter")])
        assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
        for got, w in zip(load_prm(tmp_path / "adapter").score(records(4)), want):
            assert_close(got, w)


@pytest.mark.slow
def test_qlora_checkpoint_exports_unquantised(folder, tmp_path):
    bb = BackboneConfig(name_or_path=folder, quantization="nf4", lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    train_and_save(tmp_path / "q.ckpt", backbone=bb)
    module = module_from_checkpoint(load_checkpoint(tmp_path / "q.ckpt"))
    assert module.backbone_cfg.quantization is None
    main([str(tmp_path / "q.ckpt"), str(tmp_path / "out"), "--merge"])
    scores = load_prm(tmp_path / "out").score(records(4))
    assert all(0.0 < s < 1.0 for row in scores for s in row if s is not None)
    assert_close(scores[0], module_scores(module)[0])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_head_b_adapter_loads_with_transformers_and_peft(folder, tmp_path, kind):
    """Train-free: random non-zero LoRA, new-token rows and score, exported as a TOKEN_CLS adapter."""
    from spare_train.prm.export import export_module

    module = PRMModule(backbone=BackboneConfig(name_or_path=folder, lora=LoraSettings(r=4, alpha=8, dropout=0.0)),
                       head="classifier", classifier_type=kind)  # fmt: skip
    module.configure_model()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.3)
    want = module_scores(module.eval())
    assert max(s for row in want for s in row) - min(s for row in want for s in row) > 0.1  # not a constant head

    export_module(module, tmp_path, merge=False)
    adapter = json.loads((tmp_path / "adapter_config.json").read_text())
    assert resolve_base(tmp_path, adapter["base_model_name_or_path"]) == str(Path(folder).resolve())
    assert adapter["task_type"] == "TOKEN_CLS"
    assert "score" in adapter["modules_to_save"] and adapter["trainable_token_indices"]
    assert not (tmp_path / "model.safetensors").exists()
    info = json.loads((tmp_path / "spare_prm.json").read_text())
    assert info["adapter"] and info["classifier_type"] == kind

    # the model card's snippet: plain transformers + peft (+ the registered class for the MLP head)
    snippet = card_snippet(tmp_path)
    assert "PeftModel.from_pretrained(base, PATH)" in snippet
    scope: dict = {}
    exec(snippet, scope)
    tok, model = scope["tok"], scope["model"]
    assert len(tok) == len(module.tokenizer) and type(model).__name__ == "PeftModelForTokenClassification"
    assert type(model.get_base_model()).__name__ == {"linear": "LlamaForTokenClassification",
                                                     "mlp": "SparePRMForTokenClassification"}[kind]  # fmt: skip
    got = []
    for rec in records(4):
        ids = tok(render_text(rec, tok, module.format_config), return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            probs = model(ids).logits[0].softmax(-1)[:, 1]
        got.append(probs[ids[0] == info["tag_id"]].tolist())
    prm = load_prm(tmp_path)
    assert_close(scope["step_scores"], prm.score_text(EXAMPLE["question"], EXAMPLE["steps"], EXAMPLE["instruction"]))
    for g, w in zip(got, want):
        assert_close(g, w)
    for g, w in zip(load_prm(tmp_path).score(records(4)), want):
        assert_close(g, w)
