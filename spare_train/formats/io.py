"""Turning the ``paths`` argument of :func:`~spare_train.formats.read_records` into parsed rows.

Every row comes out as ``(value, Source)``, where ``value`` is whatever the line held (a dict
for a good line, anything else for a bad one) or an :class:`~spare_train.report.DataError` for a
line that is not JSON. Nothing here knows about any annotation format.

Decisions worth knowing:

* **Bundled files.** ``bundled:synth/train.jsonl`` is the synthetic data shipped with the
  package (:func:`spare_train.assets.resolve_bundled`), so recipes run installed or checked out.
* **Shards.** A folder means its ``*.jsonl``, ``*.json`` and ``*.parquet`` files (not
  recursive), sorted by name; other files are skipped with the note ``ignored_file``.
* **Line numbers.** JSONL: the 1-based physical line (blank lines are skipped but still
  counted, so numbers match ``sed -n Np``). Parquet and ``hf:`` datasets: the 1-based row.
  A ``.json`` file holding a list: the 1-based item; otherwise it is read as JSONL.
* **Encoding.** Bytes that are not UTF-8 are decoded with U+FFFD replacement and counted as the
  repair ``non_utf8`` (one per line): one bad byte in an 800k-line file should not cost the
  record, and the report still says it happened. A UTF-8 byte-order mark is dropped silently.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spare_train.assets import resolve_bundled
from spare_train.records import Source
from spare_train.report import DataError, Report

#: File types a folder is scanned for.
SHARD_SUFFIXES = (".jsonl", ".json", ".parquet")
HF_PREFIX = "hf:"
_GLOB_CHARS = set("*?[")


def expand_paths(paths: str | Path | list[str | Path], report: Report) -> list[str]:
    """Resolve files, folders, globs and ``hf:`` names into an ordered list of inputs.

    A path that does not exist (and is not a glob or ``hf:`` name) raises ``DataError`` with
    kind ``missing_path``: a typo should fail loudly, not read less data.
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise DataError("no_input", "no input paths given")
    out: list[str] = []
    for item in items:
        text = resolve_bundled(str(item))
        if text.startswith(HF_PREFIX):
            out.append(text)
            continue
        p = Path(text).expanduser()
        if p.is_dir():
            for child in sorted(p.iterdir(), key=lambda c: c.name):
                if child.is_file() and child.suffix in SHARD_SUFFIXES:
                    out.append(str(child))
                else:
                    report.note("ignored_file")
        elif p.is_file():
            out.append(str(p))
        elif _GLOB_CHARS & set(text):
            matches = sorted(m for m in glob.glob(str(p)) if Path(m).is_file())
            if not matches:
                report.note("glob_matched_nothing")
            out.extend(matches)
        else:
            raise DataError("missing_path", f"no such file or folder: {text}", where=text)
    return out


def iter_rows(path: str, report: Report) -> Iterator[tuple[Any, Source]]:
    """Yield ``(value, source)`` for every candidate row of one input (see module docstring)."""
    if path.startswith(HF_PREFIX):
        yield from _iter_hf(path)
    elif path.endswith(".parquet"):
        yield from _iter_parquet(path)
    else:
        yield from _iter_json_text(path, report)


def _decode(raw: bytes, where: str, report: Report) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        report.repair("non_utf8", where, "bytes that are not UTF-8 replaced by U+FFFD")
        return raw.decode("utf-8", errors="replace")


def _parse(text: str, src: Source) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        snippet = text.strip()[:60]
        return DataError("invalid_json", f"not JSON ({e.msg} at column {e.colno}): {snippet!r}", str(src))


def _iter_json_text(path: str, report: Report) -> Iterator[tuple[Any, Source]]:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if path.endswith(".json") and head.startswith(b"["):
        yield from _iter_json_list(path, report)
        return
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            src = Source(path, lineno)
            yield _parse(_decode(raw, str(src), report), src), src


def _iter_json_list(path: str, report: Report) -> Iterator[tuple[Any, Source]]:
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    value = _parse(_decode(raw, f"{path}:1", report), Source(path, 1))
    if not isinstance(value, list):  # a broken list is one unreadable candidate
        yield value, Source(path, 1)
        return
    for i, item in enumerate(value, 1):
        yield item, Source(path, i)


def _iter_parquet(path: str) -> Iterator[tuple[Any, Source]]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for item in batch.to_pylist():
            row += 1
            yield item, Source(path, row)


def _iter_hf(spec: str) -> Iterator[tuple[Any, Source]]:
    """``hf:NAME[:split]`` (split defaults to ``train``), loaded with ``datasets.load_dataset``."""
    import datasets

    name, _, split = spec[len(HF_PREFIX) :].partition(":")
    split = split or "train"
    ds = datasets.load_dataset(name, split=split)
    label = f"{HF_PREFIX}{name}:{split}"
    for row, item in enumerate(ds, 1):
        yield item, Source(label, row)
