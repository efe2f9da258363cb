"""``spare-train data convert | prepare | synth``: the data layer from the command line.

Options come from the typed signatures and docstrings below (the CLI in :mod:`spare_train.cli`
builds its parsers from them), so ``--help`` is the reference. Bad input never crashes: it is
counted and reported, or, with ``--strict``, stops the run with the first problem's
``file:line`` and a non-zero exit. A run that keeps no record at all exits non-zero too. Every
output (records, report, prepared folder) is written under a temporary name and renamed when
complete, so a failed run never leaves a partial file behind.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from spare_train.files import atomic_path, atomic_write_text
from spare_train.report import Report
from spare_train.synth import SynthConfig


def _print_report(report: Report, path: str | Path | None) -> None:
    print(report.summary(), file=sys.stderr)
    if path:
        atomic_write_text(path, report.to_json())
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
        format: reader name (spare, stepwise, math_shepherd, prm800k, processbench, gsm8k_solutions,
            records, critique).
        input: a file, a folder of shards, a glob or ``hf:NAME[:split]``.
        output: the JSONL file to write (read it back with ``--format records``).
        reader_options: the reader's options, e.g. ``'{"add_reference": true}'``.
        report: also write the JSON report here.
        strict: stop at the first bad record (exit 1) instead of rejecting and reporting it.
    """
    from spare_train.formats import read_records, write_records_jsonl

    records, rep = read_records(format, input, strict=strict, **(reader_options or {}))
    if rep.kept == 0:
        _print_report(rep, report)
        rep.check_kept(str(input))
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
    """Read, validate, apply label policies, tokenise and save the dataset of a recipe.

    Prints the report and a few rendered examples with each step tag shown as ⟨label⟩.

    Args:
        config: a YAML with the PRMDataModule options: a recipe (its ``data`` section is used)
            or a file of data options alone.
        output: folder for the tokenised splits (``datasets.save_to_disk``) and ``report.json``.
        show: how many rendered examples to print.
        strict: override the config's ``strict``.
    """
    from spare_train.data import PRMDataModule
    from spare_train.tokenize import show_example

    options = _data_section(config)
    if strict is not None:
        options["strict"] = strict
    dm = PRMDataModule(**options)
    dm.setup("fit")
    with atomic_path(output) as tmp:
        tmp.mkdir()
        for split, ds in dm.datasets.items():
            ds.save_to_disk(str(tmp / split))
        (tmp / "report.json").write_text(dm.report.to_json(), encoding="utf-8")
    _print_report(dm.report, None)
    print(f"prepared splits and report.json written to {output}", file=sys.stderr)
    first = next(iter(dm.datasets.values()), None)
    for i in range(min(show, len(first) if first is not None else 0)):
        ex = first[i]
        print(f"\n── example {ex['id']} ({ex['num_steps']} steps) ──")
        print(show_example(ex, dm.tokenizer))
    return 0


def synth(output: str, config: SynthConfig) -> int:
    """Generate seeded arithmetic-chain problems with candidate solutions carrying planted step
    errors, in the SPARE annotator format (the bundled demo data: see data/README.md).

    Args:
        output: the JSONL file to write.
        config: what to generate.
    """
    from spare_train.synth import generate, write_jsonl

    rows = generate(config)
    write_jsonl(rows, output)
    print(f"wrote {len(rows)} candidates of {config.num_questions} questions to {output}", file=sys.stderr)
    return 0
