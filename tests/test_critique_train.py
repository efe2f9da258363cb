"""Critics end to end on tiny models: critique and refinement examples carry loss on the target
only, a critic trained on a few records reproduces their critiques (which parse, with P("correct")
read at the verdict tokens), export writes a critic with a model card whose snippet runs, and the
``critique``, ``evaluate --critic`` and ``fit`` commands work on it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_policy import one_thread  # noqa: F401  (autouse: tiny models run faster single-threaded)

from spare_train import synth
from spare_train.cli import main as cli
from spare_train.critique import TEMPLATE, CritiqueDataModule
from spare_train.critique.export import critique_state, export_critic
from spare_train.critique.generate import INFO_NAME, Critic, load_critic, verdict_token_ids
from spare_train.formats import read_records
from spare_train.policy import PolicyModule

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("crit") / "train.jsonl"
    cfg = synth.SynthConfig(num_questions=3, seed=5, candidates_per_question=2, max_ops=2, error_rate=0.7)
    synth.write_jsonl(synth.generate(cfg), path)
    return str(path)


def verdict_pattern_share(dm, batches: int = 60) -> float:
    """Mean share of a training batch taken by its most common verdict pattern."""
    from collections import Counter

    shares = []
    for i, batch in enumerate(dm.train_dataloader()):
        if i == batches:
            break
        rows = [tuple(r) for r in batch["step_labels"].tolist()]
        shares.append(Counter(rows).most_common(1)[0][1] / len(rows))
    return sum(shares) / len(shares)


def test_critic_batches_mix_verdicts_through_the_recipe_and_by_default(tmp_path, monkeypatch):
    """A critique's length follows its verdicts, so length-grouped batches held candidates with the
    same verdicts (91 % of a batch on the bundled data) and the tiny critic fitted them by step
    position, never learning to check a step. The recipe and the module's default shuffle."""
    from spare_train.cli import lightning_cli

    monkeypatch.chdir(tmp_path)
    made = lightning_cli(["--config", str(ROOT / "recipes" / "critique" / "tiny.yaml")], run=False)
    made.datamodule.setup("fit")
    assert verdict_pattern_share(made.datamodule) < 0.4
    kwargs = dict(train=str(ROOT / "data" / "synth" / "train.jsonl"), quote_steps=True, max_length=512, batch_size=16)
    default = CritiqueDataModule(**kwargs)
    default.setup("fit")
    assert verdict_pattern_share(default) < 0.4
    grouped = CritiqueDataModule(**kwargs, group_by_length=True)  # what both did before
    grouped.setup("fit")
    assert verdict_pattern_share(grouped) > 0.8


def test_critique_examples_put_the_loss_on_the_critique_only(data_file):
    dm = CritiqueDataModule(train=data_file, val_fraction=0, max_length=512, batch_size=8)
    dm.setup("fit")
    tok, records = dm.tokenizer, dm.records["train"]
    assert len(dm.datasets["train"]) == len(records) == 6
    batch = next(iter(dm._loader("train", train=False)))
    for r in range(batch["input_ids"].shape[0]):
        rec = next(x for x in records if x.id == batch["ids"][r])
        lm = batch["loss_mask"][r]
        target = tok.decode(batch["input_ids"][r][lm])
        from spare_train.critique.views import critique_of

        assert target == TEMPLATE.render(critique_of(rec)[1]) + tok.eos_token
        prompt = tok.decode(batch["input_ids"][r][: int(lm.nonzero()[0])])
        assert TEMPLATE.instruction in prompt and "Step 1: " + rec.steps[0] in prompt and prompt.endswith("<|assistant|>\n")
        ids = batch["step_ids"][r]
        for k, ok in enumerate(critique_of(rec)[1].verdicts):  # each critique line is its step's span
            assert tok.decode(batch["input_ids"][r][ids == k]).startswith(f"Step {k + 1}: ")
            assert batch["step_labels"][r, k] == float(ok)
    assert dm.state_dict()["spare_critique"]["mode"] == "critique"


def test_refinement_examples_learn_a_correct_solution(data_file):
    dm = CritiqueDataModule(train=data_file, val_fraction=0, mode="refine", reader_options={"add_reference": True})
    dm.setup("fit")
    tok, ds = dm.tokenizer, dm.datasets["train"]
    wrong = [r for r in dm.records["train"] if not r.is_reference and r.first_error() >= 0]
    assert len(ds) == len(wrong) > 0
    for ex in ds:
        cand = next(r for r in wrong if ex["ids"][0].startswith(r.id + "->"))
        ref = next(r for r in dm.records["train"] if r.is_reference and r.group_id == cand.group_id)
        assert tok.decode(ex["response_ids"][0]) == "\n".join(ref.steps) + tok.eos_token
        prompt = tok.decode(ex["prompt_ids"])
        assert "Critique:\n" in prompt and TEMPLATE.refine_instruction in prompt


def _overfit(dm: CritiqueDataModule, steps: int = 150) -> PolicyModule:
    torch.manual_seed(0)
    module = PolicyModule(objective="sft", reference="none", tokenizer="tiny", prompt_format=dm.format_config, lr=3e-3)
    module.configure_model()
    module.policy.train()
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    batch = next(iter(dm._loader("train", train=False)))
    for _ in range(steps):
        loss, _ = module.compute_loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.05, loss.item()
    return module.eval()


@pytest.fixture(scope="module")
def critic_dir(data_file, tmp_path_factory):
    dm = CritiqueDataModule(train=data_file, val_fraction=0, max_length=512, batch_size=8)
    dm.setup("fit")
    module = _overfit(dm)
    return export_critic(module, tmp_path_factory.mktemp("export") / "critic", dm.state_dict()["spare_critique"])


@pytest.mark.slow
def test_a_trained_critic_writes_critiques_that_parse_with_verdict_probabilities(critic_dir, data_file):
    records, _ = read_records("spare", data_file)
    critic = load_critic(critic_dir)
    results = critic.critique(records, batch_size=4)
    from spare_train.critique.views import critique_of

    for rec, res in zip(records, results, strict=True):
        assert res.error is None, (res.error, res.text)
        want = critique_of(rec)[1]
        assert res.text == TEMPLATE.render(want)
        assert res.verdicts == want.verdicts and res.first_error == want.first_error
        assert all((p > 0.5) == v for p, v in zip(res.p_correct, res.verdicts, strict=True))
    # sampled decoding goes through the same reading
    torch.manual_seed(0)
    sampled = critic.critique(records[:2], sample=True, temperature=0.5)
    assert all(len(r.p_correct) == rec.num_steps for r, rec in zip(sampled, records[:2], strict=True))


def test_verdict_probability_is_read_at_the_verdict_token(tmp_path):
    """``_read`` maps each parsed verdict to the generated token that starts it."""
    from spare_train.assets import tiny_model, tiny_tokenizer
    from spare_train.critique.template import Critique, StepCritique
    from spare_train.records import Prompt, StepRecord

    tok = tiny_tokenizer()
    info = {"mode": "critique", "template": TEMPLATE.__dict__, "prompt_format": {"template": "chat", "max_length": 512}}
    critic = Critic(tiny_model("llama"), tok, info)
    offset, c_id, i_id = verdict_token_ids(tok)
    assert offset == 0 and c_id != i_id
    text = TEMPLATE.render(Critique((StepCritique("ok", True), StepCritique("no", False))))
    gen = tok.encode(text, add_special_tokens=False)
    logits = torch.zeros(len(gen), 2)
    at = [j for j, t in enumerate(gen) if t in (c_id, i_id)][:2]  # the conclusion's "incorrect" comes after
    logits[at[0]] = torch.tensor([2.0, 0.0])
    logits[at[1]] = torch.tensor([0.0, 1.0])
    rec = StepRecord("a", "a", Prompt("q"), ["x", "y"], [1.0, 0.0])
    res = critic._read(rec, text, gen, logits)
    assert res.error is None and res.verdicts == [True, False]
    assert res.p_correct == pytest.approx([torch.sigmoid(torch.tensor(2.0)).item(), torch.sigmoid(torch.tensor(-1.0)).item()])
    bad = critic._read(rec, text.replace("Verdict: incorrect", "Verdict: wrong"), gen, logits)
    assert bad.verdicts == [True, None] and bad.p_correct[1] is None and bad.first_error is None and "wrong" in bad.error


@pytest.mark.slow
def test_export_card_snippet_runs_as_copied(critic_dir, tmp_path):
    info = json.loads((critic_dir / INFO_NAME).read_text())
    assert info["mode"] == "critique" and info["template"]["instruction"] == TEMPLATE.instruction
    card = (critic_dir / "README.md").read_text()
    assert TEMPLATE.instruction in card and "<|assistant|>" in card  # the exact model input is shown
    snippet = re.search(r"## Generating with plain transformers\n\n.*?```python\n(.*?)```", card, re.S).group(1)
    assert "spare_train" not in snippet
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert TEMPLATE.parse(proc.stdout.rstrip("\n"), 3).error is not None or "Verdict" in proc.stdout


@pytest.mark.slow
def test_critique_and_evaluate_commands(critic_dir, data_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "c.jsonl"
    monkeypatch.setenv("SPARE_TRAIN_PROGRESS_EVERY", "0")  # a progress line after every batch
    assert cli(["critique", "--model", str(critic_dir), "--input", data_file, "--output", str(out), "--batch_size", "3"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    records, _ = read_records("spare", data_file)
    assert [r["id"] for r in rows] == [r.id for r in records]
    assert all(r["malformed"] is None and len(r["p_correct"]) == len(x.steps) for r, x in zip(rows, records, strict=True))
    err = capsys.readouterr().err
    assert "6 parsed (100.0 %)" in err
    # not a terminal: plain progress lines, never a bar's carriage returns
    assert "critiquing" in err and "\r" not in err
    # critique-in-the-loop: the critic's verdicts filter candidates before RFT
    from spare_train.labels import apply_policies
    from spare_train.report import Report

    kept = apply_policies(records, [{"name": "critic", "path": str(out)}], Report())
    assert [r.id for r in kept] == [r.id for r in records if r.first_error() < 0]

    from test_backbone import tiny_folder

    from spare_train.models.backbone import BackboneConfig
    from spare_train.prm import PRMModule
    from spare_train.prm.export import export_module

    prm = PRMModule(backbone=BackboneConfig(name_or_path=tiny_folder(tmp_path / "base")))
    prm.configure_model()
    prm_dir = export_module(prm, tmp_path / "prm")
    m = tmp_path / "m.json"
    assert cli(["evaluate", "--model", str(prm_dir), "--critic", str(critic_dir), "--data", data_file,
                "--tau", "0.5", "--output", str(m)]) == 0  # fmt: skip
    result = json.loads(m.read_text())
    assert set(result["columns"]) == {"PRM", "critic"}
    critic_metrics = result["columns"]["critic"]
    assert critic_metrics["critique/parse_rate"] == 1.0 and critic_metrics["step/acc"] == 1.0
    assert critic_metrics["step/auroc"] == pytest.approx(1.0) and critic_metrics["first_error/f1"] == 1.0
    table = capsys.readouterr().out
    assert "critiques that parse" in table and "PRM" in table and "critic" in table
    assert cli(["evaluate", "--model", str(critic_dir), "--data", data_file, "--output", str(m)]) == 0
    assert json.loads(m.read_text())["metrics"]["step/auroc"] == pytest.approx(1.0)
    capsys.readouterr()
    assert cli(["evaluate", "--model", str(critic_dir), "--critic", str(prm_dir), "--data", data_file]) == 1
    err = capsys.readouterr().err
    assert "--critic takes a critic export" in err and "Traceback" not in err  # one line, before reading data


@pytest.mark.slow
def test_fit_and_export_commands_write_a_critic_and_a_refiner(data_file, tmp_path, capsys):
    from spare_train.models.hf import load_checkpoint

    for mode in ("critique", "refine"):
        run = tmp_path / mode
        args = ["fit", "--config", "recipes/critique/tiny.yaml", "--trainer.max_steps", "2", "--trainer.default_root_dir",
                str(run), "--data.init_args.train", data_file, "--data.init_args.mode", mode,
                "--data.init_args.reader_options", '{"add_reference": true}', "--data.init_args.val_fraction", "0.34",
                "--trainer.val_check_interval", "1", "--data.init_args.batch_size", "2"]  # fmt: skip
        assert cli(args) == 0
        (ckpt,) = run.rglob("last.ckpt")
        state = critique_state(load_checkpoint(ckpt))
        assert state["mode"] == mode and state["template"] == {**TEMPLATE.__dict__, "quote_steps": True}  # as the recipe says
        assert cli(["export", str(ckpt), str(tmp_path / f"{mode}-out")]) == 0
        info = json.loads((tmp_path / f"{mode}-out" / INFO_NAME).read_text())
        assert info["mode"] == mode and not info["adapter"]
        card = (tmp_path / f"{mode}-out" / "README.md").read_text()
        assert ("Critique:\\n" in card or "Critique:\n" in card) if mode == "refine" else TEMPLATE.instruction in card
    assert "exported refiner" in capsys.readouterr().out
    with pytest.raises(ValueError, match="refine model, not a critic"):
        load_critic(tmp_path / "refine-out")
