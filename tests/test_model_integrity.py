"""Checkpoints and model folders are data, not code; a broken (NaN) model cannot look good.

The crafted inputs are what an attacker or an accident produces: a checkpoint whose
hyper-parameters set ``backbone.extra.trust_remote_code`` and point ``name_or_path`` at a folder
whose ``auto_map`` code writes a marker file when imported, and models whose weights are NaN.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from test_prm import loader, records, trainer

from spare_train.assets import resolve_model_name
from spare_train.cli import main
from spare_train.models.finite import NonFiniteError
from spare_train.prm import PRMModule
from spare_train.prm.evaluate import evaluate_scores
from spare_train.prm.export import export_module
from spare_train.prm.scoring import load_prm

MARKER_CODE = '''import pathlib
pathlib.Path({marker!r}).write_text("code from a model folder ran")
from transformers import LlamaConfig, LlamaForCausalLM


class MarkerConfig(LlamaConfig):
    model_type = {model_type!r}


class MarkerForCausalLM(LlamaForCausalLM):
    config_class = MarkerConfig
'''


@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    """Where transformers would copy remote code: a temporary folder, never the user's cache."""
    import transformers.dynamic_module_utils as dmu

    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    monkeypatch.syspath_prepend(str(tmp_path / "hf_modules"))
    return tmp_path / "hf_modules"


def code_folder(src: Path, dest: Path, marker: Path, model_type: str = "llama") -> Path:
    """A copy of model folder ``src`` whose config maps the Auto classes to code writing ``marker``."""
    shutil.copytree(src, dest)
    config = json.loads((dest / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "marker.MarkerConfig", "AutoModelForCausalLM": "marker.MarkerForCausalLM"}
    config["model_type"] = model_type
    (dest / "config.json").write_text(json.dumps(config))
    (dest / "marker.py").write_text(MARKER_CODE.format(marker=str(marker), model_type=model_type))
    return dest


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real PRM checkpoint (tiny-llama, one optimizer step), hyper-parameters as the CLI writes them."""
    path = tmp_path_factory.mktemp("ckpt") / "prm.ckpt"
    L.seed_everything(0)
    module = PRMModule(lr=1e-3, scheduler="constant", tokenizer="tiny")
    t = trainer(max_steps=1)
    t.fit(module, loader(module, n=4))
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["_class_path"] = "spare_train.prm.PRMModule"
    torch.save(ckpt, path)
    return path


def crafted(checkpoint: Path, out: Path, **hparams) -> Path:
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["hyper_parameters"].update(hparams)
    torch.save(ckpt, out)
    return out


def evil_backbone(folder: Path) -> dict:
    return {"name_or_path": str(folder), "dtype": "float32", "gradient_checkpointing": False, "lora": None,
            "quantization": None, "attn_implementation": None, "extra": {"trust_remote_code": True}}  # fmt: skip


# ----------------------------------------------------------------------------- 4. data, not code


def test_export_never_runs_or_copies_code_a_checkpoint_names(checkpoint, tmp_path, modules_cache, capsys):
    marker = tmp_path / "MARKER"
    evil = code_folder(Path(resolve_model_name("tiny-llama")), tmp_path / "evil", marker)
    ckpt = crafted(checkpoint, tmp_path / "crafted.ckpt", backbone=evil_backbone(evil))
    assert main(["export", str(ckpt), str(tmp_path / "out")]) == 0
    assert not marker.exists()
    assert not list((tmp_path / "out").rglob("*.py")) and "auto_map" not in (tmp_path / "out" / "config.json").read_text()
    assert "ignored backbone.extra ['trust_remote_code']" in capsys.readouterr().err
    load_prm(tmp_path / "out").score(records(2))  # the export is an ordinary model folder
    # the user's explicit opt-in still works, and the export still carries no code
    assert main(["export", str(ckpt), str(tmp_path / "out2"), "--trust_remote_code"]) == 0
    assert marker.exists()
    assert not list((tmp_path / "out2").rglob("*.py")) and "auto_map" not in (tmp_path / "out2" / "config.json").read_text()


def _recipe(tmp_path: Path, extra: str = "") -> Path:
    from spare_train import synth

    data = tmp_path / "train.jsonl"
    synth.write_jsonl(synth.generate(synth.SynthConfig(num_questions=4, seed=1)), data)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""trainer:
  accelerator: cpu
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  limit_val_batches: 1
  default_root_dir: {tmp_path / "run"}
model:
  class_path: spare_train.prm.PRMModule
  init_args:
    backbone:
      name_or_path: tiny-llama{extra}
data:
  class_path: spare_train.data.PRMDataModule
  init_args:
    train: {data}
    tokenizer: tiny
    val_fraction: 0.5
    batch_size: 2
""")
    return recipe


def test_validate_with_ckpt_path_keeps_the_recipes_model(checkpoint, tmp_path, modules_cache):
    marker = tmp_path / "MARKER"
    evil = code_folder(Path(resolve_model_name("tiny-llama")), tmp_path / "evil", marker)
    ckpt = crafted(checkpoint, tmp_path / "crafted.ckpt", backbone=evil_backbone(evil), tokenizer=str(evil))
    assert main(["validate", "--config", str(_recipe(tmp_path)), "--ckpt_path", str(ckpt)]) == 0
    assert not marker.exists()
    # an explicit opt-in on the command line is the user's: it runs
    assert main(["validate", "--config", str(_recipe(tmp_path)), "--ckpt_path", str(ckpt),
                 "--model.init_args.backbone.name_or_path", str(evil),
                 "--model.init_args.backbone.extra", '{"trust_remote_code": true}']) == 0  # fmt: skip
    assert marker.exists()


def test_a_checkpoint_cannot_name_the_class_to_import(checkpoint, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "MARKER"
    (tmp_path / "evil_pkg.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
                                          "from spare_train.prm import PRMModule as Evil\n")  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = crafted(checkpoint, tmp_path / "crafted.ckpt", _class_path="evil_pkg.Evil")
    assert main(["validate", "--config", str(_recipe(tmp_path)), "--ckpt_path", str(ckpt)]) == 1
    assert "checkpoint_class" in capsys.readouterr().err
    assert not marker.exists() and "evil_pkg" not in sys.modules


def test_load_prm_never_runs_a_folders_code_unless_asked(tmp_path, modules_cache, monkeypatch):
    base = PRMModule(tokenizer="tiny")
    base.configure_model()
    folder = export_module(base, tmp_path / "prm")
    marker = tmp_path / "MARKER"
    evil = code_folder(folder, tmp_path / "evil", marker, model_type="marker_llama")
    monkeypatch.setattr("builtins.input", lambda *a: "y")  # a user (or a pipe) answering transformers' prompt
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_prm(evil)
    assert not marker.exists()
    load_prm(evil, trust_remote_code=True)
    assert marker.exists()


# ----------------------------------------------------------------------------- 5. a broken model cannot look good


class Poison(Callback):
    """Set every weight of the model to NaN when training starts."""

    def on_train_start(self, trainer, module):
        with torch.no_grad():
            for p in module.parameters():
                p.fill_(math.nan)


def test_a_nan_loss_stops_training_naming_the_step():
    module = PRMModule(tokenizer="tiny")
    with pytest.raises(NonFiniteError, match=r"loss is not finite at optimizer step 0 \(epoch 0, batch 0; rank 0: loss nan\)"):
        trainer(max_steps=2, callbacks=[Poison()]).fit(module, loader(module, n=4, batch_size=2))


def test_a_nan_loss_can_skip_its_batch_and_is_counted():
    module = PRMModule(tokenizer="tiny", nonfinite_loss="skip", lr=1e-3)
    real = module.loss
    calls = []

    def nan_on_the_second_batch(logits, batch, first_error_only=False):
        calls.append(1)
        loss = real(logits, batch, first_error_only)
        return loss * math.nan if len(calls) == 2 else loss

    module.loss = nan_on_the_second_batch
    weights = []

    class Snapshot(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            weights.append({n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad})

    t = trainer(max_steps=3, callbacks=[Snapshot()])
    t.fit(module, loader(module, n=8, batch_size=2))
    guard = next(c for c in t.callbacks if type(c).__name__ == "NonFiniteLoss")
    assert guard.skipped == 1 and len(calls) == 3
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])  # the skipped batch moved nothing
    assert not all(torch.equal(weights[1][n], weights[2][n]) for n in weights[0])
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_a_checkpoint_with_nonfinite_weights_is_never_written(tmp_path):
    module = PRMModule(tokenizer="tiny", nonfinite_loss="skip")
    t = trainer(max_steps=1)
    t.fit(module, loader(module, n=2, batch_size=2))
    with torch.no_grad():
        next(p for p in module.parameters() if p.requires_grad).view(-1)[0] = math.inf
    with pytest.raises(NonFiniteError, match="refusing to save a checkpoint at optimizer step 1"):
        t.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()


def test_the_policy_module_shares_the_guard():
    from spare_train.assets import tiny_model
    from spare_train.policy import PolicyModule

    module = PolicyModule.from_model(tiny_model("llama"), objective="sft", tokenizer="tiny", nonfinite_loss="skip")
    kinds = {type(c).__name__: c for c in module.configure_callbacks()}
    assert "NonFiniteGuard" in kinds and kinds["NonFiniteLoss"].mode == "skip"


@pytest.fixture(scope="module")
def nan_export(tmp_path_factory):
    """An exported PRM whose every weight is NaN (written behind export's back: export refuses it)."""
    from safetensors.torch import load_file, save_file

    module = PRMModule(tokenizer="tiny")
    module.configure_model()
    folder = export_module(module, tmp_path_factory.mktemp("nan") / "prm")
    weights = folder / "model.safetensors"
    state = load_file(weights)
    save_file({k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in state.items()}, weights,
              metadata={"format": "pt"})  # fmt: skip
    return folder


def test_export_refuses_nonfinite_weights(checkpoint, tmp_path, capsys):
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["state_dict"] = {k: torch.full_like(v, math.nan) for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "nan.ckpt")
    assert main(["export", str(tmp_path / "nan.ckpt"), str(tmp_path / "out")]) == 1
    assert "nonfinite_weights: refusing to export" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_score_and_evaluate_fail_on_an_all_nan_model(nan_export, tmp_path, capsys):
    from test_scoring import stepwise_file

    data = stepwise_file(tmp_path / "in.jsonl", records(4))
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--model", str(nan_export), "--input", str(data), "--format", "stepwise",
                 "--output", str(out)]) == 1  # fmt: skip
    assert "nonfinite_scores" in capsys.readouterr().err and not out.exists()
    assert main(["evaluate", "--model", str(nan_export), "--data", str(data), "--format", "stepwise",
                 "--output", str(tmp_path / "m.json")]) == 1  # fmt: skip
    printed = capsys.readouterr()
    assert "nonfinite_scores" in printed.err and "AUROC" not in printed.out and "best-of-N" not in printed.out
    assert not (tmp_path / "m.json").exists()
    # and the metrics themselves: a NaN score is never "lowest", every figure over it is NaN
    recs = records(4)
    metrics = evaluate_scores(recs, load_prm(nan_export).score(recs), tau=0.5)
    assert all(math.isnan(metrics[k]) for k in ("step/auroc", "step/acc", "first_error/f1", "bon/min", "bon/prod"))


class _Touch:
    """Unpickling this runs ``Path.touch(marker)``: what a crafted checkpoint could run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resuming_from_a_crafted_checkpoint_runs_no_code(tmp_path):
    """``fit(ckpt_path=…)`` reads the file as data only (our checkpoint IO forces
    ``weights_only=True``; FSDP2 shard folders read their index with a class allow-list)."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "payload": _Touch(marker)}, evil)
    module = PRMModule(tokenizer="tiny")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        trainer(max_steps=1).fit(module, loader(module, n=2, batch_size=2), ckpt_path=str(evil))
    assert not marker.exists()
