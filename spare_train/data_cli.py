"""``spare-train data convert | prepare | synth``: the data layer from the command line.

Options come from the typed signatures and docstrings below (jsonargparse), so ``--help`` is the
reference. Bad input never crashes: it is counted and reported, or, with ``--strict``, stops the
run with the first problem's ``file:line`` and a non-zero exit.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from jsonargparse import CLI

from spare_train.report import DataError, Report


def _print_report(report: Report, path: str | None) -> None:
    print(report.summary(), file=sys.stderr)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(report.to_json(), encoding="utf-8")
        print(f"report written to {path}", file=sys.stderr)


def convert(
    format: str,
    input: str | list[str],
    output: str,
    reader_options: dict[str, Any] | None = None,
    report: str | None = None,
    strict: bool = False,
) -> int:
    """Read annotation files with a reader and write normalised records as JSONL, in input order.

    Each output line is a StepRecord: ``id``, ``group_id``, ``prompt``, ``steps``, ``labels``,
    ``outcome`` and the optional fields.

    Args:
        format: reader name (spare, stepwise, math_shepherd, prm800k, processbench, gsm8k_solutions).
        input: files, folders of shards, globs or ``hf:NAME[:split]``.
        output: the JSONL file to write.
        reader_options: the reader's options, e.g. ``'{"add_reference": true}'``.
        report: also write the JSON report here.
        strict: stop at the first bad record (exit 1) instead of rejecting and reporting it.
    """
    from spare_train.formats import read_records, write_records_jsonl

    records, rep = read_records(format, input, strict=strict, **(reader_options or {}))
    n = write_records_jsonl(records, output)
    print(f"wrote {n} records to {output}", file=sys.stderr)
    _print_report(rep, report)
    return 0


def _data_section(config: str) -> dict[str, Any]:
    import yaml

    cfg = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
    data = cfg.get("data", cfg)
    return dict(data.get("init_args", data)) if isinstance(data, dict) else {}


def prepare(config: str, output: str = "prepared", show: int = 3, strict: bool | None = None) -> int:
    """Read, validate, apply label policies, tokenise and save the dataset; print the report and a
    few rendered examples with each step tag shown as ⟨label⟩.

    Args:
        config: a YAML with the SpareDataModule options: a recipe (its ``data`` section is used)
            or a file of data options alone.
        output: folder for the tokenised splits (``datasets.save_to_disk``) and ``report.json``.
        show: how many rendered examples to print.
        strict: override the config's ``strict``.
    """
    from spare_train.data import SpareDataModule
    from spare_train.tokenize import show_example

    options = _data_section(config)
    if strict is not None:
        options["strict"] = strict
    dm = SpareDataModule(**options)
    dm.setup("fit")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    for split, ds in dm.datasets.items():
        ds.save_to_disk(str(out / split))
        print(f"{split}: {len(ds)} examples, {len(dm.records[split])} records", file=sys.stderr)
    _print_report(dm.report, str(out / "report.json"))
    first = next(iter(dm.datasets.values()), None)
    for i in range(min(show, len(first) if first is not None else 0)):
        ex = first[i]
        print(f"\n── example {ex['id']} ({ex['num_steps']} steps) ──")
        print(show_example(ex, dm.tokenizer))
    return 0


def synth(
    output: str,
    num_questions: int = 100,
    seed: int = 0,
    candidates_per_question: int = 4,
    min_ops: int = 2,
    max_ops: int = 4,
    error_rate: float = 0.5,
    malformed_rate: float = 0.02,
    preamble_rate: float = 0.05,
    max_start: int = 20,
    max_addend: int = 9,
    max_multiplier: int = 3,
    max_value: int = 99,
    max_error_offset: int = 10,
    error_types: list[str] | None = None,
    split: str = "all",
    test_fraction: float = 0.1,
) -> int:
    """Generate seeded arithmetic-chain problems with candidate solutions carrying planted step
    errors, in the SPARE annotator format (the bundled demo data).

    Args:
        output: the JSONL file to write.
        num_questions: questions; each gets ``candidates_per_question`` candidates.
        seed: same seed, same bytes.
        candidates_per_question: candidates per question.
        min_ops: fewest operations per problem.
        max_ops: most operations per problem.
        error_rate: probability that a candidate carries one planted error.
        malformed_rate: fraction of slightly broken ``grading`` JSON strings (as in real data).
        preamble_rate: fraction of candidates with text before the first step marker.
        max_start: the start number is drawn from 1..max_start.
        max_addend: numbers added or subtracted are drawn from 1..max_addend.
        max_multiplier: multipliers are drawn from 2..max_multiplier.
        max_value: every value of the reference solution stays in 0..max_value.
        max_error_offset: a wrong number differs from the right one by 1..max_error_offset.
        error_types: error kinds to plant (calculation, copy, misread); default all three.
        split: ``all`` draws from every problem; ``train`` or ``test`` only from that side of a
            fixed hash split of the question text, so a train and a test file never share a
            question whatever their seeds.
        test_fraction: share of all problems on the ``test`` side of that split.
    """
    from spare_train.synth import ERROR_TYPES, generate, write_jsonl

    rows = generate(
        num_questions, seed, candidates_per_question, min_ops=min_ops, max_ops=max_ops,
        error_rate=error_rate, malformed_rate=malformed_rate, preamble_rate=preamble_rate,
        max_start=max_start, max_addend=max_addend, max_multiplier=max_multiplier, max_value=max_value,
        max_error_offset=max_error_offset, split=split, test_fraction=test_fraction,
        error_types=tuple(error_types or ERROR_TYPES),
    )
    write_jsonl(rows, output)
    print(f"wrote {len(rows)} candidates of {num_questions} questions to {output}", file=sys.stderr)
    return 0


#: boolean options that may be given as bare flags (``--strict`` == ``--strict=true``)
FLAGS = {"strict", "merge"}


def normalize_argv(argv: list[str]) -> list[str]:
    """Accept ``--num-questions`` as well as jsonargparse's ``--num_questions``, and bare flags."""
    out = []
    for i, a in enumerate(argv):
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            name = name.replace("-", "_")
            bare = not eq and (i + 1 == len(argv) or argv[i + 1].startswith("--"))
            a = f"--{name}=true" if name in FLAGS and bare else "--" + name + eq + value
        out.append(a)
    return out


def _prepare_main(argv: list[str]) -> int:
    # `--config` is jsonargparse's own option, so prepare (whose --config is a recipe) uses argparse
    import argparse

    doc = (prepare.__doc__ or "").split("\n\n")[0]
    ap = argparse.ArgumentParser(prog="spare-train data prepare", description=doc)
    ap.add_argument("--config", required=True, help="a recipe (its data section) or a YAML of data options")
    ap.add_argument("--output", default="prepared", help="folder for the tokenised splits and report.json")
    ap.add_argument("--show", type=int, default=3, help="how many rendered examples to print")
    ap.add_argument("--strict", action=argparse.BooleanOptionalAction, default=None,
                    help="stop at the first bad record (overrides the config)")
    args = ap.parse_args(argv)
    return prepare(args.config, args.output, args.show, args.strict)


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["prepare"]:
            return _prepare_main(argv[1:])
        return CLI(
            {"convert": convert, "prepare": prepare, "synth": synth},
            args=normalize_argv(argv), as_positional=False, prog="spare-train data",
        )
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
