"""Readers: annotation files in, :class:`~spare_train.records.StepRecord` out, every loss accounted for.

>>> records, report = read_records("spare", "data/graded/", add_reference=True)  # doctest: +SKIP
>>> print(report.summary())  # doctest: +SKIP

``paths`` is a file, a folder (its ``*.jsonl``/``*.json``/``*.parquet`` shards, sorted by
name), a glob, an ``hf:NAME[:split]`` dataset, or a list of these (see :mod:`.io`). Each row
goes to the reader named by ``fmt`` (see :data:`READERS`); what it returns is validated
(:func:`.base.validate_record`) and checked for duplicate ids. Every candidate record counts
once in ``report.read`` and ends up either in the returned list or in ``report.rejected``,
so ``report.read == report.kept + len(report.rejected)`` always holds. With ``strict=True``
the first problem raises :class:`~spare_train.report.DataError` (its ``str()`` starts with
``file:line``), including any repair that can change a label (text and syntax repairs such as
non-UTF-8 bytes or a grading's JSON syntax pass). No single record can end a lenient run: an
exception no reader check anticipated rejects that record as ``internal_error`` with the
exception's text. ``records`` reads the normalised JSONL that ``data convert`` writes.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spare_train.formats import (
    critique,
    gsm8k_solutions,
    math_shepherd,
    prm800k,
    processbench,
    records,
    spare,
    stepwise,
)
from spare_train.formats.answers import extract_answer
from spare_train.formats.base import ReadContext, validate_record, write_records_jsonl
from spare_train.formats.io import expand_paths, iter_rows
from spare_train.records import StepRecord
from spare_train.report import DataError, Report

__all__ = ["READERS", "read_records", "reader_options", "write_records_jsonl", "extract_answer"]

#: format name -> reader function ``(obj, ctx, **options) -> list[StepRecord | DataError]``;
#: a reader's options are its keyword-only parameters (see each module's docstring).
READERS: dict[str, Callable[..., list]] = {
    "spare": spare.read,
    "stepwise": stepwise.read,
    "math_shepherd": math_shepherd.read,
    "prm800k": prm800k.read,
    "processbench": processbench.read,
    "gsm8k_solutions": gsm8k_solutions.read,
    "records": records.read,
    "critique": critique.read,
}


def reader_options(fmt: str) -> dict[str, Any]:
    """The options of reader ``fmt`` with their defaults."""
    return {n: p.default for n, p in _option_params(_get_reader(fmt)).items()}


def read_records(
    fmt: str,
    paths: str | Path | list[str | Path],
    *,
    strict: bool = False,
    report: Report | None = None,
    **options: Any,
) -> tuple[list[StepRecord], Report]:
    """Read every record of ``paths`` with reader ``fmt``; returns the kept records and the report.

    ``report``: an existing report to add to (``strict=True`` switches it to strict).
    ``options``: the reader's keyword options; an unknown one raises ``ValueError`` before any
    file is opened. Raises ``DataError`` for a path that does not exist and when the inputs
    hold no rows at all.
    """
    reader = _get_reader(fmt)
    _check_options(fmt, reader, options)
    if report is None:
        report = Report(strict=strict)
    elif strict:
        report.strict = True
    records: list[StepRecord] = []
    seen_ids: set[str] = set()
    state: dict[str, Any] = {}
    total_rows = 0
    for path in expand_paths(paths, report):
        n_rows = 0
        for value, src in iter_rows(path, report):
            ctx = ReadContext(src, n_rows, report, state)
            n_rows += 1
            for item in _run_reader(reader, value, ctx, options):
                report.count_read()
                if isinstance(item, DataError):
                    report.reject(item)
                    continue
                err = _check(item, ctx, seen_ids) if isinstance(item, StepRecord) else _not_a_record(item, ctx)
                if err is not None:
                    report.reject(err)
                    continue
                seen_ids.add(item.id)
                records.append(item)
        if n_rows == 0:
            report.note("empty_file", where=path)
        total_rows += n_rows
    if total_rows == 0:
        raise DataError("no_input", f"no records found in {paths!s}")
    return records, report


def _run_reader(reader: Callable, value: Any, ctx: ReadContext, options: dict) -> list:
    if isinstance(value, DataError):
        return [value]
    if not isinstance(value, dict):
        return [ctx.error("wrong_type", f"row must be a JSON object, got {type(value).__name__}")]
    try:
        return reader(value, ctx, **options)
    except DataError as e:
        return [e if e.where else DataError(e.kind, e.message, ctx.where, e.record_id)]
    except Exception as e:  # noqa: BLE001  (a shape no reader check anticipated: lose the row, not the run)
        return [ctx.error("internal_error", f"{type(e).__name__}: {e}"[:500])]


def _not_a_record(item: Any, ctx: ReadContext) -> DataError:
    return ctx.error("internal_error", f"the reader returned a {type(item).__name__}, not a StepRecord")


def _check(rec: StepRecord, ctx: ReadContext, seen_ids: set[str]) -> DataError | None:
    where = str(rec.source) if rec.source is not None else ctx.where
    try:
        validate_record(rec, where)
    except DataError as e:
        return e
    except Exception as e:  # noqa: BLE001
        rid = rec.id if isinstance(rec.id, str) else None
        return DataError("internal_error", f"{type(e).__name__}: {e}"[:500], where, rid)
    if rec.id in seen_ids:
        return DataError("duplicate_id", "an earlier record has the same id", where, rec.id)
    return None


def _get_reader(fmt: str) -> Callable:
    try:
        return READERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(sorted(READERS))}") from None


def _option_params(reader: Callable) -> dict[str, inspect.Parameter]:
    params = inspect.signature(reader).parameters
    return {n: p for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_options(fmt: str, reader: Callable, options: dict[str, Any]) -> None:
    allowed = _option_params(reader)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for format {fmt!r}; known options: {known}")
    hints = typing.get_type_hints(reader)
    for name, value in options.items():
        hint = hints.get(name)
        if typing.get_origin(hint) is typing.Literal and value not in typing.get_args(hint):
            choices = ", ".join(repr(c) for c in typing.get_args(hint))
            raise ValueError(f"option {name}={value!r} for format {fmt!r} must be one of {choices}")
