"""Turning the ``paths`` argument of :func:`~spare_train.formats.read_records` into parsed rows.

Every row comes out as ``(value, Source)``, where ``value`` is whatever the line held (a dict
for a good line, anything else for a bad one) or an :class:`~spare_train.report.DataError` for a
line that cannot be used as JSON. Nothing here knows about any annotation format, and nothing in
one line can end the run: what cannot be parsed becomes that line's rejection.

Decisions worth knowing:

* **Bundled files.** ``bundled:synth/train.jsonl`` is the synthetic data shipped with the
  package (:func:`spare_train.assets.resolve_bundled`), so recipes run installed or checked out.
* **Shards.** A folder means its ``*.jsonl``, ``*.json``, ``*.parquet``, ``*.jsonl.gz`` and
  ``*.json.gz`` files (not recursive), sorted by name; every other entry is skipped with the note
  ``ignored_file`` naming it.
* **Line numbers.** JSONL: the 1-based physical line, where ``\\n``, ``\\r\\n`` and a lone ``\\r``
  each end a line (blank lines are skipped but still counted). Parquet and ``hf:`` datasets: the
  1-based row. A ``.json`` file whose first line is not a JSON value by itself holds one
  pretty-printed document: a list gives its 1-based items, one object is line 1 (a broken
  document is one rejected candidate, not a rejection per line); any other ``.json`` is JSONL.
* **A JSON array on one line** of a JSONL file holds several rows: each of its objects is a row
  (all at that line; note ``array_line``). An array of anything else is one bad row.
* **Compression.** ``*.gz`` files are decompressed. A gzip file under another name is read too,
  with the note ``gzip_without_gz_suffix`` naming it; another compressed format (zip, zstd, bz2,
  xz) is one rejected row ``compressed_file`` that says which.
* **Encoding.** Bytes that are not UTF-8 are decoded with U+FFFD replacement and counted as the
  repair ``non_utf8`` (one per line; it changes text, never a label, so strict runs accept it).
  A UTF-8 byte-order mark is dropped silently.
* **Hostile JSON.** Nesting deeper than :data:`MAX_DEPTH` (``json_too_deep``), integers beyond
  Python's digit limit (``json_number_too_large``) and lone UTF-16 surrogate escapes such as
  ``"\\ud800"`` (``invalid_unicode``: valid JSON, but no UTF-8 writer or tokenizer takes them) are
  rejections of their line, not crashes of the run.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from spare_train.assets import resolve_bundled
from spare_train.records import Source
from spare_train.report import DataError, Report

#: File types a folder is scanned for.
SHARD_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")
HF_PREFIX = "hf:"
#: Deepest JSON nesting a row may have (real annotation rows need fewer than 10 levels).
MAX_DEPTH = 64
_GLOB_CHARS = set("*?[")
_BOM = "\xef\xbb\xbf"  # the UTF-8 byte-order mark, as latin-1 text
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_GZIP = b"\x1f\x8b"
_OTHER_COMPRESSION = {b"PK\x03\x04": "zip", b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}


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
                if child.is_file() and child.name.endswith(SHARD_SUFFIXES):
                    out.append(str(child))
                else:
                    report.note("ignored_file", where=str(child))
        elif p.is_file():
            out.append(str(p))
        elif _GLOB_CHARS & set(text):
            matches = sorted(m for m in glob.glob(str(p)) if Path(m).is_file())
            if not matches:
                report.note("glob_matched_nothing", where=text)
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


# ----------------------------------------------------------------------------- one row


def _decode(raw: bytes, where: str, report: Report) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        report.repair("non_utf8", where, "bytes that are not UTF-8 replaced by U+FFFD", strict_ok=True)
        return raw.decode("utf-8", errors="replace")


def _too_deep(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def parse_json(text: str, where: str) -> Any:
    """``json.loads(text)``, or a ``DataError`` (returned, not raised) saying why it cannot be used."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        snippet = text.strip()[:60]
        return DataError("invalid_json", f"not JSON ({e.msg} at line {e.lineno} column {e.colno}): {snippet!r}", where)
    except RecursionError:
        return DataError("json_too_deep", "nested too deeply for the JSON parser", where)
    except ValueError as e:  # an integer literal beyond sys.get_int_max_str_digits()
        return DataError("json_number_too_large", f"a number cannot be read: {str(e).split(';')[0]}", where)
    if isinstance(value, (dict, list)) and (text.count("{") + text.count("[")) > MAX_DEPTH:
        if _too_deep(value, MAX_DEPTH):
            return DataError("json_too_deep", f"nested deeper than {MAX_DEPTH} levels", where)
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            bad = e.object[e.start : e.end].encode("utf-16", "surrogatepass")[2:].hex()
            return DataError("invalid_unicode", f"a lone UTF-16 surrogate (\\u{bad}) is not text", where)
    return value


# ----------------------------------------------------------------------------- JSON / JSONL files


def _open_binary(path: str, report: Report) -> IO[bytes] | DataError:
    """The file's bytes, decompressed when gzip; a ``DataError`` for other compressed formats."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(_GZIP):
        if not path.endswith(".gz"):
            report.note("gzip_without_gz_suffix", where=path)
        return gzip.open(path, "rb")
    for prefix, name in _OTHER_COMPRESSION.items():
        if magic.startswith(prefix):
            return DataError("compressed_file", f"the file is {name}-compressed; decompress it first "
                                                "(only gzip is read directly)", f"{path}:1")  # fmt: skip
    if path.endswith(".gz"):
        return DataError("compressed_file", "named .gz but not gzip-compressed", f"{path}:1")
    return open(path, "rb")


def _lines(stream: IO[bytes]) -> Iterator[str]:
    """Lines with universal newlines, as latin-1 text: every byte kept, so ``.encode("latin-1")``
    gives the raw bytes back (UTF-8 never puts ``\\r``/``\\n`` bytes inside a character)."""
    return io.TextIOWrapper(stream, encoding="latin-1", newline=None)


def _iter_json_text(path: str, report: Report) -> Iterator[tuple[Any, Source]]:
    stream = _open_binary(path, report)
    if isinstance(stream, DataError):
        yield stream, Source(path, 1)
        return
    with stream:
        try:
            if path.removesuffix(".gz").endswith(".json") and _is_document(stream):
                yield from _iter_document(path, stream, report)
            else:
                yield from _iter_jsonl(path, stream, report)
        except (OSError, EOFError) as e:  # a truncated or corrupt gzip stream: what was read is kept
            yield DataError("unreadable_file", f"reading stopped: {type(e).__name__}: {e}", path), Source(path, 0)


def _is_document(stream: IO[bytes]) -> bool:
    """Whether a ``.json`` file is one JSON document spread over lines (pretty-printed) rather
    than JSONL: its first non-blank line is not a JSON value by itself. Rewinds ``stream``."""
    first = b""
    while not first:
        line = stream.readline()
        if not line:
            break
        first = next((p.strip() for p in re.split(rb"[\r\n]", line.removeprefix(b"\xef\xbb\xbf")) if p.strip()), b"")
    stream.seek(0)
    if not first.startswith((b"[", b"{")):
        return False
    try:
        json.loads(first)
    except ValueError:
        return True
    return False


def _iter_document(path: str, stream: IO[bytes], report: Report) -> Iterator[tuple[Any, Source]]:
    raw = stream.read().removeprefix(b"\xef\xbb\xbf")
    value = parse_json(_decode(raw, f"{path}:1", report), f"{path}:1")
    if isinstance(value, list):
        for i, item in enumerate(value, 1):
            yield item, Source(path, i)
    else:  # one object, or a broken document: one candidate
        yield value, Source(path, 1)


def _iter_jsonl(path: str, stream: IO[bytes], report: Report) -> Iterator[tuple[Any, Source]]:
    for lineno, line in enumerate(_lines(stream), 1):
        if lineno == 1 and line.startswith(_BOM):
            line = line[len(_BOM) :]
        if not line.strip():
            continue
        src = Source(path, lineno)
        value = parse_json(_decode(line.encode("latin-1"), str(src), report), str(src))
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            report.note("array_line", where=str(src))
            for item in value:
                yield item, src
        else:
            yield value, src


# ----------------------------------------------------------------------------- tables


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
