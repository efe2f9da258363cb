"""DDP and FSDP2 through ``spare-train fit`` (CPU, gloo, 2 processes in subprocesses): both modules
train, and a 2-process run equals one process with ``accumulate_grad_batches=2`` on the same data
and seed -- the weights, the exported PRM's scores and the exported policy's log-probs.

Why they should be equal: the length-grouped sampler gives rank ``r`` batches ``r, r+2, …`` of the
order one process walks, so each step sees the same two batches; DDP and FSDP average the two
per-rank gradients, and Lightning's accumulation sums half of each. What differs is float
summation order, hence the tolerances (measured values in docs/distributed.md).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from distributed_helpers import final_checkpoint, fit, load, max_abs_diff, small_spare_file

pytestmark = pytest.mark.slow

#: weights of 2-process runs vs one process with accumulation, after 6 optimizer steps (fp32)
WEIGHT_ATOL = 1e-5
#: exported PRM step scores (probabilities) and policy sequence log-probs (nats)
SCORE_ATOL = 1e-5
LOGP_ATOL = 1e-3

# every label in the loss from the first step (the recipe's first-error curriculum would train on
# another loss than the one the "loss goes down" check measures)
PRM_ARGS = ("--trainer.max_steps=6", "--trainer.limit_val_batches=0", "--data.init_args.batch_size=4",
            "--model.init_args.lr=2e-3", "--model.init_args.first_error_steps=0",
            "--trainer.log_every_n_steps=1")  # fmt: skip
# one epoch over 35 pairs (9 optimizer steps of 2 x 2 pairs), validated on the same pairs at its end
DPO_ARGS = ("--trainer.max_steps=-1", "--trainer.max_epochs=1", "--trainer.val_check_interval=1.0",
            "--trainer.limit_val_batches=1.0", "--data.init_args.batch_size=2", "--trainer.log_every_n_steps=1")  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    return {"prm": small_spare_file(root / "prm.jsonl", 240), "dpo": small_spare_file(root / "dpo.jsonl", 48),
            "cache": root / "cache", "root": root}  # fmt: skip


def _prm_run(data, name, *extra, **kw):
    run = data["root"] / name
    args = (*PRM_ARGS, f"--data.init_args.train={data['prm']}", f"--data.init_args.cache_dir={data['cache']}", *extra)
    fit("prm/tiny.yaml", run, *args, **kw)
    return run


@pytest.fixture(scope="module")
def prm_runs(data):
    return {
        "single": _prm_run(data, "prm-single", "--trainer.accumulate_grad_batches=2"),
        "ddp": _prm_run(data, "prm-ddp", devices=2, strategy="ddp"),
        "fsdp2": _prm_run(data, "prm-fsdp2", devices=2, strategy="fsdp2"),
    }


def _logged(run, key):
    import csv

    rows = list(csv.DictReader(next(run.rglob("metrics.csv")).open()))
    return [float(r[key]) for r in rows if r.get(key)]


def _prm_loss(export, records):
    from spare_train.prm.scoring import load_prm

    scores = load_prm(export).score(records)
    pairs = [(p, y) for r, s in zip(records, scores) for p, y in zip(s, r.labels) if p is not None and y is not None]
    return sum(-(y * math.log(p) + (1 - y) * math.log(1 - p)) for p, y in pairs) / len(pairs), scores


def test_ddp_and_fsdp2_train_the_prm_like_one_process(prm_runs, data, tmp_path):
    from spare_train.cli import main
    from spare_train.formats import read_records

    states = {k: load(final_checkpoint(run)) for k, run in prm_runs.items()}
    assert all(s["global_step"] == 6 for s in states.values())
    assert final_checkpoint(prm_runs["fsdp2"]).is_dir()  # sharded: a folder of per-rank shards
    diffs = {k: max_abs_diff(states[k]["state_dict"], states["single"]["state_dict"]) for k in ("ddp", "fsdp2")}
    print("max |weight difference| vs one process:", diffs)
    assert max(diffs.values()) < WEIGHT_ATOL, diffs

    records, _ = read_records("spare", data["prm"])
    records = records[:48]
    exports, losses, scores = {}, {}, {}
    for k, run in prm_runs.items():
        exports[k] = tmp_path / k
        assert main(["export", str(final_checkpoint(run)), str(exports[k])]) == 0
        losses[k], scores[k] = _prm_loss(exports[k], records)
    flat = {k: torch.tensor([x for s in v for x in s]) for k, v in scores.items()}
    score_diffs = {k: float((flat[k] - flat["single"]).abs().max()) for k in ("ddp", "fsdp2")}
    print("max |score difference| vs one process:", score_diffs, "losses:", losses)
    assert max(score_diffs.values()) < SCORE_ATOL, score_diffs

    # the loss goes down: the trained model's loss on training records is below the untrained one's
    from spare_train.prm.export import export_module
    from spare_train.prm.module import PRMModule

    untrained = PRMModule(tokenizer="tiny", prompt_format={"template": "chat", "step_tag": " ки", "max_length": 256})
    untrained.configure_model()
    export_module(untrained.eval(), tmp_path / "untrained")
    before, _ = _prm_loss(tmp_path / "untrained", records)
    print("loss on training records before:", before)
    for k in prm_runs:
        assert losses[k] < before, (k, losses[k], before)


@pytest.fixture(scope="module")
def dpo_runs(data):
    out = {}
    for name, kw in (("single", {}), ("ddp", {"devices": 2, "strategy": "ddp"}),
                     ("fsdp2", {"devices": 2, "strategy": "fsdp2"})):  # fmt: skip
        run = data["root"] / f"dpo-{name}"
        args = (*DPO_ARGS, f"--data.init_args.train={data['dpo']}", f"--data.init_args.val={data['dpo']}",
                f"--data.init_args.cache_dir={data['cache']}")  # fmt: skip
        if name == "single":
            args += ("--trainer.accumulate_grad_batches=2",)
        if name == "fsdp2":  # one consolidated file (the PRM test covers the sharded folder)
            args += ("--trainer.strategy.init_args.save_distributed_checkpoint=false",)
        fit("offline_rl/tiny-dpo.yaml", run, *args, **kw)
        out[name] = run
    return out


def _sequence_logps(export, texts):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt").input_ids
            logits = model(ids).logits[0, :-1].float()
            out.append(float(logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).sum()))
    return torch.tensor(out)


def test_ddp_and_fsdp2_train_dpo_like_one_process(dpo_runs, data, tmp_path):
    from spare_train.cli import main

    states = {k: load(final_checkpoint(run)) for k, run in dpo_runs.items()}
    assert all(s["global_step"] == 9 for s in states.values())
    assert final_checkpoint(dpo_runs["fsdp2"]).is_file()
    diffs = {k: max_abs_diff(states[k]["state_dict"], states["single"]["state_dict"]) for k in ("ddp", "fsdp2")}
    print("max |weight difference| vs one process:", diffs)
    assert max(diffs.values()) < WEIGHT_ATOL, diffs

    rows = [json.loads(x) for x in data["dpo"].read_text().splitlines()[:8]]
    texts = [f"{r['question']}\n{r['grade_ans']}" for r in rows]
    logps = {}
    for k, run in dpo_runs.items():
        assert main(["export", str(final_checkpoint(run)), str(tmp_path / k)]) == 0
        logps[k] = _sequence_logps(tmp_path / k, texts)
    logp_diffs = {k: float((logps[k] - logps["single"]).abs().max()) for k in ("ddp", "fsdp2")}
    print("max |log-prob difference| vs one process:", logp_diffs)
    assert max(logp_diffs.values()) < LOGP_ATOL, logp_diffs
    for k in dpo_runs:  # DPO's loss is log 2 before training (policy = reference) and must go down
        first, val = _logged(dpo_runs[k], "train/loss")[0], _logged(dpo_runs[k], "val/loss")
        print(k, "first train loss", first, "val loss after the epoch", val)
        assert abs(first - math.log(2)) < 1e-5 and val[-1] < math.log(2) - 0.02, (k, first, val)


def test_precomputed_reference_is_split_across_ranks_and_gathered(data):
    """``reference: precomputed``: each rank scores its share of the examples and the shares are
    gathered; the cache a 2-process run (DDP, FSDP2) keeps equals the one-process cache."""
    caches = {}
    for name, kw in (("single", {}), ("ddp", {"devices": 2, "strategy": "ddp"}),
                     ("fsdp2", {"devices": 2, "strategy": "fsdp2"})):  # fmt: skip
        run = data["root"] / f"precomputed-{name}"
        fit("offline_rl/tiny-dpo.yaml", run, "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
            "--model.init_args.reference=precomputed", "--data.init_args.batch_size=4",
            f"--data.init_args.train={data['dpo']}", f"--data.init_args.val={data['dpo']}",
            f"--data.init_args.cache_dir={data['cache']}", **kw)  # fmt: skip
        caches[name] = load(final_checkpoint(run))["callbacks"]["ReferenceLogps"]["cache"]
    want = caches["single"]
    assert set(want) == {"train", "val"} and len(want["train"]) == 35
    for name in ("ddp", "fsdp2"):
        for split in want:
            assert caches[name][split].keys() == want[split].keys(), (name, split)
            diff = max(float((a - b).abs().max()) for k in want[split]
                       for a, b in zip(caches[name][split][k], want[split][k], strict=True))  # fmt: skip
            print(name, split, "max |log-prob difference|:", diff)
            assert diff < 1e-4, (name, split, diff)
