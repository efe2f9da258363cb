"""Offline RL from step annotations, end to end on CPU in a few minutes.

1. SFT a tiny random policy (``tiny-llama``) on the reference solutions of the bundled synthetic
   SPARE training questions (``data/synth/train.jsonl``: single-digit arithmetic chains; held out:
   ``data/synth/test.jsonl``; ``--train`` / ``--test`` take other SPARE files).
2. Train it further with a preference objective (default DPO; ``--objective orpo`` etc.) on SPARE
   pairs (strict Pareto on outcome and mean step label, reference as chosen), the SFT model as the
   reference, its log-probs precomputed once.
3. On held-out questions, before and after step 2: implicit-reward preference accuracy (ties, a
   policy equal to its reference, count as half right) and greedy-decoding accuracy (final answer
   parsed from the generated text and compared with the reference answer).

Command: python scripts/offline_rl_demo.py [--objective dpo] [--sft-steps 500] [--pref-steps 200]
[--train data/synth/train.jsonl] [--test data/synth/test.jsonl]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from spare_train import synth
from spare_train.assets import tiny_model
from spare_train.formats import read_records
from spare_train.formats.answers import extract_answer, normalize_answer
from spare_train.policy import PolicyModule
from spare_train.data.policy import FilterConfig, PolicyDataModule, PairingConfig, tokenize_completions

ROOT = Path(__file__).resolve().parents[1]


BUNDLED_TRAIN, BUNDLED_TEST = ROOT / "data" / "synth" / "train.jsonl", ROOT / "data" / "synth" / "test.jsonl"


def data_files(out: Path, train: str | None = None, test: str | None = None) -> tuple[str, str]:
    """``train``/``test`` when given, else the bundled synthetic data, else (a checkout without
    ``data/``) the same kind generated here."""
    if train or test:
        return str(train or BUNDLED_TRAIN), str(test or BUNDLED_TEST)
    if BUNDLED_TRAIN.exists() and BUNDLED_TEST.exists():
        return str(BUNDLED_TRAIN), str(BUNDLED_TEST)
    print("bundled data/synth/*.jsonl not found: generating synthetic data instead")
    synth.write_jsonl(synth.generate(400, seed=1, candidates_per_question=6), out / "train.jsonl")
    synth.write_jsonl(synth.generate(60, seed=2, candidates_per_question=6), out / "test.jsonl")
    return str(out / "train.jsonl"), str(out / "test.jsonl")


def trainer(steps: int, out: Path) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, default_root_dir=out,
    )


def pair_accuracy(module: PolicyModule, dm: PolicyDataModule) -> tuple[float, float]:
    """(implicit-reward accuracy, length-normalised log-prob accuracy) over the held-out pairs."""
    module.policy.eval()
    acc = lp = n = 0.0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            _, m = module.compute_loss(batch)
            b = batch["first_error"].shape[0]
            acc += m["rewards/accuracy"].item() * b
            lp += m["logps/accuracy"].item() * b
            n += b
    return acc / n, lp / n


def greedy_accuracy(model: torch.nn.Module, tokenizer, files: str, max_new_tokens: int = 64) -> float:
    """Share of held-out questions whose greedy answer equals the reference answer."""
    records, _ = read_records("spare", files, add_reference=True)
    refs = [r for r in records if r.is_reference]
    prompts, _ = tokenize_completions(refs, tokenizer)
    model.eval()
    right = 0
    for i in range(0, len(refs), 16):
        chunk = prompts[i : i + 16]
        width = max(map(len, chunk))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, use_cache=True,
            )
        for ref, row in zip(refs[i : i + 16], out[:, width:], strict=True):
            got = extract_answer(tokenizer.decode(row, skip_special_tokens=True))
            want = ref.answer or extract_answer(ref.steps[-1])
            right += got is not None and normalize_answer(got) == normalize_answer(want)
    return right / len(refs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objective", default="dpo", choices=["dpo", "ipo", "orpo", "step_weighted_dpo"])
    ap.add_argument("--sft-steps", type=int, default=500)
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--pref-steps", type=int, default=200)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--pref-lr", type=float, default=1e-4)
    ap.add_argument("--nll-weight", type=float, default=1.0,
                    help="chosen answers' NLL added to DPO/IPO (0 = plain DPO, which wrecks greedy decoding here)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = torch's default (all cores)")
    ap.add_argument("--train", help=f"SPARE training file (default: {BUNDLED_TRAIN.relative_to(ROOT)})")
    ap.add_argument("--test", help=f"SPARE held-out file (default: {BUNDLED_TEST.relative_to(ROOT)})")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    out = Path(tempfile.mkdtemp(prefix="offline_rl_demo_"))
    train, test = data_files(out, args.train, args.test)
    print(f"data: train {train}, held out {test}")
    common = dict(val_files=test, read_options={"add_reference": True}, max_length=256, max_prompt_length=128)

    t0 = time.time()
    sft_dm = PolicyDataModule(train, view="filtered", filtering=FilterConfig(include_reference=True),
                                 batch_size=16, **common)
    sft_dm.setup("fit")
    print(f"SFT data: {sft_dm.summaries['train']}")
    sft = PolicyModule.from_model(tiny_model("llama", seed=0), objective="sft", lr=args.sft_lr, warmup_ratio=0.05)
    tok = sft_dm.tokenizer
    print(f"greedy accuracy, random policy: {greedy_accuracy(sft.policy, tok, test):.3f}")
    trainer(args.sft_steps, out).fit(sft, sft_dm)
    print(f"SFT: {args.sft_steps} steps in {time.time() - t0:.0f}s")

    pref_dm = PolicyDataModule(
        train, view="pairs", batch_size=8,
        pairing=PairingConfig(reference_as_chosen=True, max_pairs_per_question=10), **common,
    )
    pref_dm.setup("fit")
    print(f"preference data (train): {pref_dm.summaries['train']}")
    print(f"preference data (held out): {pref_dm.summaries['val']}")
    policy = copy.deepcopy(sft.policy)
    pref = PolicyModule.from_model(policy, objective=args.objective, beta=args.beta, lr=args.pref_lr,
                                      nll_weight=args.nll_weight,
                                      reference="precomputed" if args.objective != "orpo" else "none")
    if args.objective != "orpo":
        pref.precompute_reference(pref_dm)  # the SFT policy is the reference
    before = pair_accuracy(pref, pref_dm), greedy_accuracy(policy, tok, test)
    t1 = time.time()
    trainer(args.pref_steps, out).fit(pref, pref_dm)
    print(f"{args.objective}: {args.pref_steps} steps in {time.time() - t1:.0f}s")
    after = pair_accuracy(pref, pref_dm), greedy_accuracy(pref.policy, tok, test)

    print(f"\nheld-out questions ({test})")
    print(f"{'':34s}{'after SFT':>12s}{'after ' + args.objective:>16s}")
    print(f"{'implicit-reward pair accuracy':34s}{before[0][0]:12.3f}{after[0][0]:16.3f}")
    print(f"{'log-prob pair accuracy':34s}{before[0][1]:12.3f}{after[0][1]:16.3f}")
    print(f"{'greedy-decoding accuracy':34s}{before[1]:12.3f}{after[1]:16.3f}")


if __name__ == "__main__":
    main()
