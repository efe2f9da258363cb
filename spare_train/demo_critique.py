"""The critic demo: ``python -m spare_train.demo_critique``.

Trains the tiny critic (``recipes/critique/tiny.yaml``: critique SFT on the bundled synthetic
data, whose gradings carry an explanation per step) and the tiny scalar PRM
(``recipes/prm/tiny.yaml``, same data; ``--prm DIR`` reuses an exported one), exports both, and
on the held-out questions of ``bundled:synth/test.jsonl`` prints, side by side: verdict (step)
accuracy, step AUROC from P("correct") at the critic's verdict token, first-error F1 (tau chosen on
the validation split, for each model), best-of-N, and the critique parse rate, next to a
position-only baseline (a step's score falls with its index). Every step goes through the
user-facing paths: ``spare-train fit``'s CLI, ``spare-train export``, ``load_critic(...).critique``
(what ``spare-train critique`` and ``spare-train evaluate`` run) and ``evaluate_scores``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

CRITIC_RECIPE = "bundled:recipes/critique/tiny.yaml"
PRM_RECIPE = "bundled:recipes/prm/tiny.yaml"
TEST = "bundled:synth/test.jsonl"


def position_scores(records: list) -> list[list[float]]:
    """``1 / (1 + step index)``: a decreasing function of the index (the same AUROC as ``-index``)
    that lies in (0, 1], so a first-error threshold can be chosen for it like for the models."""
    return [[1.0 / (1 + i) for i in range(r.num_steps)] for r in records]


def accuracy_by_position(records: list, scores: list, max_steps: int = 6) -> list[tuple[int, float, int]]:
    """``(step number, accuracy of score >= 0.5 against the label, steps)`` per step position."""
    from spare_train.records import is_label

    out = []
    for k in range(max_steps):
        pairs = [(s[k], r.labels[k]) for r, s in zip(records, scores, strict=True)
                 if k < r.num_steps and s[k] is not None and is_label(r.labels[k])]  # fmt: skip
        if pairs:
            out.append((k + 1, sum((p >= 0.5) == (y >= 0.5) for p, y in pairs) / len(pairs), len(pairs)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spare_train.demo_critique", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/demo-critique", help="where to write the demo's files")
    parser.add_argument("--prm", default=None, help="an exported tiny PRM to reuse instead of training one")
    parser.add_argument("--batch-size", type=int, default=64, help="critiques per generate call")
    parser.add_argument("fit_args", nargs="*", metavar="-- FIT_ARG",
                        help="after --, options for the critic's training run, e.g. -- --trainer.max_steps=300")  # fmt: skip
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from spare_train.critique.generate import load_critic, summarize
    from spare_train.demo_prm import fit_and_export
    from spare_train.formats import read_records
    from spare_train.prm.evaluate import evaluate_scores, format_table
    from spare_train.prm.scoring import load_prm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    t0 = time.time()
    cli = fit_and_export(CRITIC_RECIPE, out / "critic-run", out / "critic", args.fit_args, console)
    if cli is None:
        return 1
    critic_steps, critic_min = cli.trainer.global_step, (time.time() - t0) / 60
    val_records = [r for r in cli.datamodule.records["val"] if not r.is_reference]
    prm_dir, prm_steps = Path(args.prm) if args.prm else out / "prm", None
    if args.prm is None:
        prm_cli = fit_and_export(PRM_RECIPE, out / "prm-run", prm_dir, None, console)
        if prm_cli is None:
            return 1
        prm_steps = prm_cli.trainer.global_step

    console.rule(f"held-out evaluation on {TEST} (tau chosen on the {len(val_records)} validation candidates)")
    test_records, _ = read_records("spare", TEST)
    critic, prm = load_critic(out / "critic"), load_prm(prm_dir)
    t1 = time.time()
    val_critiques = critic.critique(val_records, batch_size=args.batch_size, progress=True)
    critiques = critic.critique(test_records, batch_size=args.batch_size, progress=True)
    gen_s = time.time() - t1
    scores = {
        "critic": ([c.p_correct for c in val_critiques], [c.p_correct for c in critiques]),
        "PRM": (prm.score(val_records, batch_size=64), prm.score(test_records, batch_size=64)),
        "position": (position_scores(val_records), position_scores(test_records)),
    }
    columns = {}
    for name, (val, test) in scores.items():
        tau = evaluate_scores(val_records, val)["first_error/tau"]
        columns[name] = evaluate_scores(test_records, test, tau=tau)
    parse = summarize(critiques)
    columns["critic"]["critique/parse_rate"] = parse["parse_rate"]
    columns["critic"]["critique/num_malformed"] = float(parse["critiques"] - parse["parsed"])
    console.print(format_table(columns))

    by_pos = Table(title="verdict accuracy by step position (score >= 0.5 vs label, %)")
    by_pos.add_column("step")
    for name in ("critic", "PRM"):
        by_pos.add_column(name, justify="right")
    acc = {n: dict((k, (a, m)) for k, a, m in accuracy_by_position(test_records, scores[n][1])) for n in ("critic", "PRM")}
    for k in sorted(acc["PRM"]):
        by_pos.add_row(str(k), *[f"{100 * acc[n][k][0]:.1f}" if k in acc[n] else "–" for n in ("critic", "PRM")])
    console.print(by_pos)
    if parse["malformed_by_reason"]:
        console.print(f"malformed critiques by reason: {parse['malformed_by_reason']}")
    with (out / "critiques.jsonl").open("w") as f:
        for r, c in zip(test_records, critiques, strict=True):
            f.write(json.dumps(c.to_json(r)) + "\n")
    result = {"columns": columns, "critique": parse, "train/critic_optimizer_steps": critic_steps,
              "train/prm_optimizer_steps": prm_steps, "prm": str(prm_dir), "critic_minutes": critic_min,
              "generation_seconds": gen_s}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    c, p, b = columns["critic"], columns["PRM"], columns["position"]
    console.print(
        f"\ncritic trained {critic_steps} optimizer steps ({critic_min:.1f} min with data preparation); PRM "
        f"{'trained ' + str(prm_steps) + ' steps' if prm_steps is not None else 'reused from ' + str(prm_dir)}\n"
        f"held-out step AUROC: critic {c['step/auroc']:.3f} | PRM {p['step/auroc']:.3f} | position {b['step/auroc']:.3f}\n"
        f"verdict accuracy {c['step/acc']:.3f}, first-error F1 {c['first_error/f1']:.3f} (PRM {p['first_error/f1']:.3f}); "
        f"critiques that parse: {parse['parsed']}/{parse['critiques']} ({100 * parse['parse_rate']:.1f} %)\n"
        f"targets: step AUROC >= 0.85 {'met' if c['step/auroc'] >= 0.85 else 'MISSED'}, "
        f"parse rate >= 99 % {'met' if parse['parse_rate'] >= 0.99 else 'MISSED'}"
    )
    console.print(f"exported critic: {out / 'critic'} (see its README.md); metrics: {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
