"""The reading framework: inputs, encodings, common validation, strict mode, options, writing, answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from jsonargparse import ArgumentParser

from spare_train.formats import READERS, extract_answer, read_records, reader_options, write_records_jsonl
from spare_train.records import StepRecord
from spare_train.report import DataError, Report

FIXTURES = Path(__file__).parent / "fixtures" / "formats"

STEPWISE = [
    {
        "id": "a",
        "prompt": "What is 2 + 3?",
        "completions": ["2 + 3 = 5.", "The answer is 5."],
        "labels": [True, True],
    },
    {
        "id": "b",
        "prompt": "What is 2 + 3?",
        "completions": ["2 + 3 = 6.", "The answer is 6."],
        "labels": [False, False],
    },
    {
        "id": "c",
        "prompt": "What is 4 * 5?",
        "completions": ["4 * 5 = 20.", "The answer is 20."],
        "labels": [True, True],
    },
]


def lines(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def assert_adds_up(report: Report) -> None:
    assert report.read == report.kept + len(report.rejected)


# ----------------------------------------------------------------------------- inputs


def test_folder_of_mixed_shards_is_read_in_name_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "00-first.jsonl").write_text(lines(STEPWISE[0]))
    (tmp_path / "01-second.json").write_text(json.dumps([STEPWISE[1]]))
    pq.write_table(pa.Table.from_pylist([STEPWISE[2]]), tmp_path / "02-third.parquet")
    (tmp_path / "README.md").write_text("# graded shards\n")
    (tmp_path / "sub").mkdir()
    records, report = read_records("stepwise", tmp_path)
    assert [r.id for r in records] == ["a", "b", "c"]
    assert [str(r.source) for r in records] == [
        f"{tmp_path / '00-first.jsonl'}:1",
        f"{tmp_path / '01-second.json'}:1",
        f"{tmp_path / '02-third.parquet'}:1",
    ]
    assert report.notes["ignored_file"] == 2
    assert_adds_up(report)


def test_parquet_rows_are_numbered_from_one(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = {**STEPWISE[2], "id": "d", "labels": [True]}
    pq.write_table(pa.Table.from_pylist([STEPWISE[0], bad]), tmp_path / "s.parquet")
    records, report = read_records("stepwise", tmp_path / "s.parquet")
    assert [r.id for r in records] == ["a"]
    assert report.rejected[0].where == f"{tmp_path / 's.parquet'}:2"


def test_glob_and_list_of_paths(tmp_path):
    (tmp_path / "x1.jsonl").write_text(lines(STEPWISE[0]))
    (tmp_path / "x2.jsonl").write_text(lines(STEPWISE[1]))
    (tmp_path / "y.jsonl").write_text(lines(STEPWISE[2]))
    records, _ = read_records("stepwise", str(tmp_path / "x*.jsonl"))
    assert [r.id for r in records] == ["a", "b"]
    records, _ = read_records("stepwise", [tmp_path / "y.jsonl", str(tmp_path / "x1.jsonl")])
    assert [r.id for r in records] == ["c", "a"]


def test_json_file_may_hold_jsonl(tmp_path):
    (tmp_path / "s.json").write_text(lines(*STEPWISE))
    records, _ = read_records("stepwise", tmp_path / "s.json")
    assert [r.id for r in records] == ["a", "b", "c"]


def test_empty_file_is_a_note_and_all_empty_is_an_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    (tmp_path / "full.jsonl").write_text(lines(STEPWISE[0]))
    records, report = read_records("stepwise", tmp_path)
    assert len(records) == 1 and report.notes["empty_file"] == 1
    with pytest.raises(DataError, match="no_input"):
        read_records("stepwise", tmp_path / "empty.jsonl")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="no_input"):
        read_records("stepwise", tmp_path / "empty_dir")


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(DataError, match="missing_path") as exc:
        read_records("stepwise", tmp_path / "nope.jsonl")
    assert str(exc.value).startswith(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="no_input"):
        read_records("stepwise", str(tmp_path / "nothing-*.jsonl"))


def test_hf_prefix_loads_a_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return STEPWISE[:2]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records, _ = read_records("stepwise", "hf:trl-lib/math_shepherd:test")
    assert calls == [("trl-lib/math_shepherd", "test")]
    assert [str(r.source) for r in records] == [
        "hf:trl-lib/math_shepherd:test:1",
        "hf:trl-lib/math_shepherd:test:2",
    ]
    read_records("stepwise", "hf:trl-lib/math_shepherd")
    assert calls[-1] == ("trl-lib/math_shepherd", "train")


# ----------------------------------------------------------------------------- bad lines


def test_line_that_is_not_json_counts_as_one_rejected_record(tmp_path):
    truncated = json.dumps(STEPWISE[1])[:57]  # a write cut off mid-line
    p = tmp_path / "s.jsonl"
    p.write_text(lines(STEPWISE[0], truncated, '["a", "list"]', STEPWISE[2]))
    records, report = read_records("stepwise", p)
    assert [r.id for r in records] == ["a", "c"]
    assert [(r.kind, r.where) for r in report.rejected] == [
        ("invalid_json", f"{p}:2"),
        ("wrong_type", f"{p}:3"),
    ]
    assert report.read == 4
    assert_adds_up(report)


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path):
    p = tmp_path / "s.jsonl"
    row = json.dumps({**STEPWISE[0], "prompt": "Caf\u00e9 sells 2 + 3 croissants?"}, ensure_ascii=False)
    p.write_bytes(b"\xef\xbb\xbf" + row.encode("latin-1") + b"\n" + lines(STEPWISE[2]).encode())
    records, report = read_records("stepwise", p)
    assert records[0].prompt.question == "Caf\ufffd sells 2 + 3 croissants?"
    assert report.repaired["non_utf8"] == 1 and report.kept == 2


def test_duplicate_ids_reject_the_later_record(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(lines(STEPWISE[0], STEPWISE[1], {**STEPWISE[2], "id": "a"}))
    records, report = read_records("stepwise", p)
    assert [r.id for r in records] == ["a", "b"]
    (rej,) = report.rejected
    assert (rej.kind, rej.record_id, rej.where) == ("duplicate_id", "a", f"{p}:3")


def test_every_rejection_names_where_and_why(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(lines(
        STEPWISE[0],
        "{not json}",
        {**STEPWISE[1], "labels": [0.2, 7]},
        {**STEPWISE[2], "completions": [], "labels": []},
        {"id": "e", "completions": ["x"], "labels": [True]},
    ))  # fmt: skip
    _, report = read_records("stepwise", p)
    kinds = [(r.kind, r.where.rsplit(":", 1)[1], r.record_id) for r in report.rejected]
    assert kinds == [
        ("invalid_json", "2", None),
        ("bad_label", "3", "b"),
        ("no_steps", "4", "c"),
        ("missing_field", "5", "e"),
    ]
    assert all(r.reason for r in report.rejected)
    assert "'prompt'" in report.rejected[-1].reason
    assert_adds_up(report)
    assert "read 5  kept 1  rejected 4" in report.summary()


def test_strict_raises_the_first_error_with_file_and_line(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(lines(STEPWISE[0], {**STEPWISE[1], "labels": [True]}, "{oops"))
    with pytest.raises(DataError) as exc:
        read_records("stepwise", p, strict=True)
    assert str(exc.value).startswith(f"{p}:2: label_count_mismatch")
    assert exc.value.record_id == "b"


def test_strict_still_accepts_repairs(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_bytes(
        json.dumps({**STEPWISE[0], "prompt": "Caf\u00e9?"}, ensure_ascii=False).encode("latin-1") + b"\n"
    )
    records, report = read_records("stepwise", p, strict=True)
    assert len(records) == 1 and report.repaired["non_utf8"] == 1


def test_existing_report_is_added_to(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(lines(*STEPWISE))
    report = Report()
    read_records("stepwise", p, report=report)
    _, same = read_records("stepwise", p, report=report)
    assert same is report and report.read == 6


# ----------------------------------------------------------------------------- options


def test_unknown_format_and_option_are_clear_errors():
    with pytest.raises(ValueError, match="unknown format 'spare2'.*spare, stepwise"):
        read_records("spare2", FIXTURES / "spare_gsm8k.jsonl")
    with pytest.raises(
        ValueError,
        match=r"unknown option\(s\) add_refernce for format 'spare'; known options: .*add_reference",
    ):
        read_records("spare", FIXTURES / "spare_gsm8k.jsonl", add_refernce=True)
    with pytest.raises(ValueError, match="after_error='all'.*'none', 'incorrect'"):
        read_records("processbench", FIXTURES / "processbench.json", after_error="all")
    with pytest.raises(ValueError, match="neutral_as=0.5"):
        read_records("prm800k", FIXTURES / "prm800k.jsonl", neutral_as=0.5)


def test_every_reader_documents_typed_options():
    assert set(READERS) == {
        "spare",
        "stepwise",
        "math_shepherd",
        "prm800k",
        "processbench",
        "gsm8k_solutions",
        "records",
        "critique",
    }
    assert reader_options("spare")["missed_grading_as_outcome"] is False
    assert reader_options("prm800k") == {"neutral_as": 1.0}
    for name, fn in READERS.items():  # typed keyword options, so a CLI can be generated from them
        assert fn.__doc__
        parser = ArgumentParser(exit_on_error=False)
        parser.add_function_arguments(fn, skip={"obj", "ctx"})
        assert vars(parser.parse_args([])).keys() == reader_options(name).keys()
    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(READERS["spare"], skip={"obj", "ctx"})
    parsed = parser.parse_args(["--add_reference", "true", "--alignment_keys", "[aligned, refs]"])
    assert parsed.add_reference is True and tuple(parsed.alignment_keys) == ("aligned", "refs")


# ----------------------------------------------------------------------------- writing


def test_write_records_jsonl_round_trips(tmp_path):
    records, _ = read_records("spare", FIXTURES / "spare_gsm8k.jsonl", add_reference=True)
    out = tmp_path / "out" / "records.jsonl"
    assert write_records_jsonl(records, out) == len(records)
    text = out.read_text(encoding="utf-8")
    assert "farmer’s market" in text  # not ASCII-escaped
    back = [StepRecord.from_dict(json.loads(line)) for line in text.splitlines()]
    assert [r.to_dict() for r in back] == [r.to_dict() for r in records]


def test_folder_copy_of_fixtures_reads_the_same(tmp_path):
    shutil.copy(FIXTURES / "spare_gsm8k.jsonl", tmp_path / "part-0.jsonl")
    records, report = read_records("spare", tmp_path)
    assert report.kept == 5 and len({r.id for r in records}) == 5


# ----------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    "text, answer",
    [
        ("So the total is $\\boxed{1,000}$.", "1000"),
        ("First \\boxed{3}, then \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("Janet sells 9 eggs.\n#### 18", "18"),
        ("She makes $18.\nA: 18.0", "18"),
        ("Hence, the answer is 90.", "90"),
        ("The answer is: 52", "52"),
        ("The answer is left.", "left"),
        ("So the greatest common factor is 320,\\!000.\n\n# Answer\n\n320,000", "320000"),
        ("It costs 2.50 dollars and then 7.", "7"),
        ("It costs -0.50 dollars", "-0.5"),
        ("I don't know.", None),
        ("", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer
