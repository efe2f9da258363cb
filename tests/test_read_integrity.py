"""Trust nothing, lose nothing: no record crashes a run, counts match the file, outputs are atomic.

Each test feeds one kind of hostile or odd input through ``read_records`` or the ``spare-train``
command a user would run, and checks that it is read as what it is or rejected with its
``file:line``, and that ``read == kept + rejected`` still holds.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from spare_train.cli import main
from spare_train.formats import READERS, read_records
from spare_train.records import StepRecord
from spare_train.report import MAX_LOCATIONS, DataError, Report

GOOD = [
    {"id": "a", "prompt": "What is 2 + 3?", "completions": ["2 + 3 = 5.", "The answer is 5."], "labels": [1, 1]},
    {"id": "b", "prompt": "What is 2 + 3?", "completions": ["2 + 3 = 6.", "The answer is 6."], "labels": [0, 0]},
    {"id": "c", "prompt": "What is 4 * 5?", "completions": ["4 * 5 = 20.", "The answer is 20."], "labels": [1, 1]},
]


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def adds_up(report: Report) -> bool:
    return report.read == report.kept + len(report.rejected)


# ----------------------------------------------------------------------------- 1. no record crashes a run


HOSTILE = {
    "json_too_deep": '{"id": "x", "prompt": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "json_too_deep_but_parseable": '{"id": "x", "prompt": "q", "meta": ' + "[" * 500 + "]" * 500 + "}",
    "json_number_too_large": '{"id": "x", "prompt": "q", "completions": ["a"], "labels": [' + "1" * 5000 + "]}",
    "invalid_unicode": '{"id": "x", "prompt": "What is \\ud800 2 + 3?", "completions": ["a"], "labels": [1]}',
}
KINDS = {"json_too_deep_but_parseable": "json_too_deep"}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_line_is_rejected_with_its_line_not_a_crash(tmp_path, name):
    p = tmp_path / "s.jsonl"
    p.write_text(jsonl(GOOD[0], HOSTILE[name], GOOD[2]))
    records, report = read_records("stepwise", p)
    assert [r.id for r in records] == ["a", "c"] and adds_up(report)
    (rej,) = report.rejected
    assert (rej.kind, rej.where) == (KINDS.get(name, name), f"{p}:2")
    with pytest.raises(DataError, match=f"{p}:2: {KINDS.get(name, name)}"):
        read_records("stepwise", p, strict=True)


def test_a_big_integer_where_a_label_belongs_is_a_bad_label(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(jsonl({**GOOD[0], "labels": [10**400, 1]}))
    _, report = read_records("stepwise", p)
    assert report.rejected[0].kind == "bad_label"


def test_a_lone_surrogate_never_reaches_the_converted_file_or_the_tokenizer(tmp_path):
    raw = tmp_path / "s.jsonl"
    raw.write_text(jsonl(GOOD[0], HOSTILE["invalid_unicode"], GOOD[2]))
    out = tmp_path / "records.jsonl"
    assert main(["data", "convert", "--format", "stepwise", "--input", str(raw), "--output", str(out)]) == 0
    assert [json.loads(x)["id"] for x in out.read_text(encoding="utf-8").splitlines()] == ["a", "c"]
    from spare_train.tokenize import FormatConfig, load_tokenizer, tokenize_records

    rec = StepRecord.from_dict({"id": "s", "group_id": "g", "prompt": "What is \ud800?", "steps": ["x"], "labels": [1.0]})
    report = Report()
    assert tokenize_records([rec], load_tokenizer("tiny"), FormatConfig(template="plain"), report) == []
    assert report.rejected[0].kind == "invalid_unicode"


def test_an_unexpected_exception_rejects_that_record_as_internal_error(tmp_path, monkeypatch):
    stepwise = READERS["stepwise"]

    def flaky(obj, ctx, **kw):
        if obj["id"] == "b":
            raise ZeroDivisionError("a reader bug")
        if obj["id"] == "c":
            raise RecursionError("maximum recursion depth exceeded")
        return stepwise(obj, ctx, **kw)

    monkeypatch.setitem(READERS, "stepwise", flaky)
    p = tmp_path / "s.jsonl"
    p.write_text(jsonl(*GOOD))
    records, report = read_records("stepwise", p)
    assert [r.id for r in records] == ["a"] and adds_up(report)
    assert [(r.kind, r.where, r.reason) for r in report.rejected] == [
        ("internal_error", f"{p}:2", "ZeroDivisionError: a reader bug"),
        ("internal_error", f"{p}:3", "RecursionError: maximum recursion depth exceeded"),
    ]
    with pytest.raises(DataError, match=f"{p}:2: internal_error: ZeroDivisionError"):
        read_records("stepwise", p, strict=True)


def test_a_failed_convert_leaves_no_partial_output(tmp_path, monkeypatch, capsys):
    raw, out, rep = tmp_path / "s.jsonl", tmp_path / "records.jsonl", tmp_path / "report.json"
    raw.write_text(jsonl(*GOOD))
    out.write_text("the previous complete output\n")
    calls = []
    real = StepRecord.to_dict

    def dies_on_the_second(self):
        calls.append(self.id)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(self)

    monkeypatch.setattr(StepRecord, "to_dict", dies_on_the_second)
    with pytest.raises(OSError, match="disk full"):
        main(["data", "convert", "--format", "stepwise", "--input", str(raw), "--output", str(out), "--report", str(rep)])
    assert out.read_text() == "the previous complete output\n"  # untouched, not half rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records.jsonl", "s.jsonl"]  # no temp file left


def test_a_failed_prepare_leaves_no_output_folder(tmp_path, monkeypatch):
    raw = tmp_path / "s.jsonl"
    main(["data", "synth", "--num_questions", "4", "--output", str(raw)])
    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"train: {raw}\ntokenizer: tiny\nval_fraction: 0.25\n")

    def broken_save(self, *a, **k):
        raise OSError("disk full")

    import datasets

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", broken_save)
    with pytest.raises(OSError):
        main(["data", "prepare", "--config", str(cfg), "--output", str(tmp_path / "prepared"), "--show", "0"])
    assert not (tmp_path / "prepared").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["data.yaml", "s.jsonl"]


# ----------------------------------------------------------------------------- 3. counts that match the file


@pytest.mark.parametrize("newline", [b"\r", b"\r\n", b"\n"])
def test_every_line_ending_gives_one_row_per_line(tmp_path, newline):
    p = tmp_path / "s.jsonl"
    p.write_bytes(newline.join(json.dumps(r).encode() for r in GOOD) + newline)
    records, report = read_records("stepwise", p)
    assert [r.id for r in records] == ["a", "b", "c"] and report.read == 3 and not report.rejected
    assert [r.source.line for r in records] == [1, 2, 3]


def test_a_json_array_on_one_line_is_its_rows(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(json.dumps(GOOD[:2]) + "\n" + json.dumps(GOOD[2]) + "\n")
    records, report = read_records("stepwise", p)
    assert [r.id for r in records] == ["a", "b", "c"] and report.read == 3
    assert [str(r.source) for r in records] == [f"{p}:1", f"{p}:1", f"{p}:2"]
    assert report.noted_at["array_line"] == [f"{p}:1"]


def test_a_pretty_printed_object_in_a_json_file_is_one_row(tmp_path):
    p = tmp_path / "one.json"
    p.write_text(json.dumps(GOOD[0], indent=2))
    records, report = read_records("stepwise", p)
    assert [r.id for r in records] == ["a"] and report.read == 1 and not report.rejected
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(GOOD[0], indent=2)[:-3])
    records, report = read_records("stepwise", broken)
    assert records == [] and report.read == 1 and report.rejected[0].kind == "invalid_json"
    lst = tmp_path / "list.json"
    lst.write_text(json.dumps(GOOD, indent=1))
    records, _ = read_records("stepwise", lst)
    assert [str(r.source) for r in records] == [f"{lst}:1", f"{lst}:2", f"{lst}:3"]  # the item number


def test_gzip_files_are_read_and_named(tmp_path):
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(jsonl(*GOOD[:2]).encode()))
    records, report = read_records("stepwise", gz)
    assert [r.id for r in records] == ["a", "b"] and not report.notes
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "00.jsonl.gz").write_bytes(gz.read_bytes())
    (folder / "01.json.gz").write_bytes(gzip.compress(json.dumps([GOOD[2]], indent=1).encode()))
    records, _ = read_records("stepwise", folder)
    assert [r.id for r in records] == ["a", "b", "c"]
    hidden = tmp_path / "plain-looking.jsonl"
    hidden.write_bytes(gz.read_bytes())
    records, report = read_records("stepwise", hidden)
    assert [r.id for r in records] == ["a", "b"] and report.noted_at["gzip_without_gz_suffix"] == [str(hidden)]


@pytest.mark.parametrize("magic, name", [(b"\x28\xb5\x2f\xfd", "zstd"), (b"PK\x03\x04", "zip"), (b"BZh91AY", "bz2")])
def test_other_compressed_files_are_one_rejection_that_says_so(tmp_path, magic, name):
    p = tmp_path / "s.jsonl"
    p.write_bytes(magic + b"\x00" * 64)
    records, report = read_records("stepwise", p)
    assert records == [] and report.read == 1
    assert report.rejected[0].kind == "compressed_file" and name in report.rejected[0].reason


def test_skipped_files_in_a_folder_are_listed_by_name(tmp_path):
    (tmp_path / "00.jsonl").write_text(jsonl(GOOD[0]))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "01.jsonl.zst").write_bytes(b"x")
    records, report = read_records("stepwise", tmp_path)
    assert report.noted_at["ignored_file"] == [str(tmp_path / "01.jsonl.zst"), str(tmp_path / "notes.txt")]
    assert "notes.txt" in report.summary()


def test_a_run_that_keeps_nothing_exits_non_zero_and_says_why(tmp_path, capsys):
    p = tmp_path / "s.jsonl"
    p.write_text(jsonl({**GOOD[0], "labels": [1]}, "{oops"))
    out = tmp_path / "o.jsonl"
    assert main(["data", "convert", "--format", "stepwise", "--input", str(p), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "nothing_kept" in err and "read 2" in err and "label_count_mismatch 1" in err and not out.exists()


def test_a_datamodule_split_that_keeps_nothing_fails(tmp_path):
    from spare_train.data import PRMDataModule

    p = tmp_path / "s.jsonl"
    p.write_text(jsonl({**GOOD[0], "labels": [1]}))
    dm = PRMDataModule(train=str(p), format="stepwise", val_fraction=0.0)
    with pytest.raises(DataError, match="nothing_kept"):
        dm.setup("fit")


def test_repairs_keep_a_bounded_list_of_where(tmp_path):
    p = tmp_path / "s.jsonl"
    row = json.dumps({**GOOD[0], "prompt": "Caf\u00e9?"}, ensure_ascii=False).encode("latin-1")
    p.write_bytes(b"\n".join([row] * (MAX_LOCATIONS + 5)) + b"\n")
    _, report = read_records("stepwise", p)
    assert report.repaired["non_utf8"] == MAX_LOCATIONS + 5
    assert report.repaired_at["non_utf8"] == [f"{p}:{i}" for i in range(1, MAX_LOCATIONS + 1)]
    assert json.loads(report.to_json())["repaired_at"]["non_utf8"][0] == f"{p}:1"
    assert f"(first at {p}:1)" in report.summary()


# ----------------------------------------------------------------------------- tokeniser repairs reach the report


def _recipe(tmp_path: Path, raw: Path, cache: bool = False) -> Path:
    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"train: {raw}\nformat: stepwise\ntokenizer: tiny\nval_fraction: 0.0\ntemplate: plain\n"
                   + (f"cache_dir: {tmp_path / 'cache'}\n" if cache else ""))  # fmt: skip
    return cfg


def test_data_prepare_reports_the_tokenizers_repairs_with_where(tmp_path):
    raw = tmp_path / "s.jsonl"
    raw.write_text(jsonl(GOOD[0], {**GOOD[1], "completions": ["2 + 3 = 6. ки", "The answer is 6."]}))
    out = tmp_path / "prepared"
    assert main(["data", "prepare", "--config", str(_recipe(tmp_path, raw)), "--output", str(out), "--show", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["repaired"] == {"tag_in_text": 1} and report["repaired_at"]["tag_in_text"] == [f"{raw}:2"]


def test_the_fit_data_path_reports_tokenizer_repairs_built_and_cached(tmp_path):
    from spare_train.data import PRMDataModule

    raw = tmp_path / "s.jsonl"
    raw.write_text(jsonl(GOOD[0], {**GOOD[1], "completions": ["2 + 3 = 6. ки", "The answer is 6."]}))
    for _ in range(2):  # the second setup is a cache hit: the events are replayed with their where
        dm = PRMDataModule(train=str(raw), format="stepwise", val_fraction=0.0, template="plain",
                           cache_dir=str(tmp_path / "cache"))  # fmt: skip
        dm.setup("fit")
        assert dm.report.repaired["tag_in_text"] == 1 and dm.report.repaired_at["tag_in_text"] == [f"{raw}:2"]
        assert "tag_in_text" in dm.summary()


# ----------------------------------------------------------------------------- convert output reads back


def test_convert_output_is_read_back_by_the_records_format(tmp_path):
    raw = tmp_path / "s.jsonl"
    main(["data", "synth", "--num_questions", "3", "--output", str(raw)])
    first, second = tmp_path / "r1.jsonl", tmp_path / "r2.jsonl"
    argv = ["data", "convert", "--reader_options", '{"add_reference": true}']
    assert main([*argv, "--format", "spare", "--input", str(raw), "--output", str(first)]) == 0
    assert main(["data", "convert", "--format", "records", "--input", str(first), "--output", str(second)]) == 0
    a, _ = read_records("spare", raw, add_reference=True)
    b, report = read_records("records", second)
    assert report.kept == len(a) and not report.repaired
    strip = lambda r: {k: v for k, v in r.to_dict().items() if k not in ("source", "extra")}  # noqa: E731
    assert [strip(r) for r in b] == [strip(r) for r in a]
    assert b[0].extra["converted_from"] == f"{raw}:1" and str(b[0].source) == f"{second}:1"  # the original line


def test_the_records_format_checks_what_it_reads(tmp_path):
    good = {"id": "x", "group_id": "g", "prompt": {"question": "q?"}, "steps": ["a"], "labels": [1.0]}
    p = tmp_path / "r.jsonl"
    p.write_text(jsonl(good, {**good, "id": "y", "labels": [2]}, {**good, "id": "z", "is_reference": "yes"},
                       {**good, "id": "w", "prompt": {"question": "another?"}}))  # fmt: skip
    records, report = read_records("records", p)
    assert [r.id for r in records] == ["x", "w"] and [r.kind for r in report.rejected] == ["bad_label", "wrong_type"]
    assert records[1].group_id.startswith("g~") and report.repaired["group_id_conflict"] == 1


def test_events_of_an_older_cache_are_replayed():
    old = {"rejected": [{"where": "f:3", "record_id": "x", "kind": "too_long", "reason": "r", "stage": "tokenize"}],
           "repaired": {"tag_in_text": 2}, "notes": {"steps_truncated": 1}}  # fmt: skip
    report = Report(read=5)
    report.merge(Report.from_dict(old))
    assert (report.kept, report.repaired["tag_in_text"], report.notes["steps_truncated"]) == (4, 2, 1)
