"""Build the tiny tokenizer and model configs shipped in ``spare_train/assets/tiny/``.

    HF_HUB_OFFLINE=1 python scripts/build_tiny_tokenizer.py [--out spare_train/assets/tiny]

Deterministic: the same inputs give byte-identical files (checked by running it twice).

Corpus: synthetic SPARE data from ``spare_train.synth`` (seed 12345, not a shipped split) plus
the GSM8K questions and solutions in ``../shared/data/gsm8k/model_solutions.jsonl`` (next to the checkout) when that
file exists (``--gsm8k`` to point elsewhere, ``--gsm8k ''`` to skip).

Design (what later code relies on):

* Byte-level BPE, 4096 ids in all. Ids 0..5 are the special tokens ``<|pad|>``, ``<|bos|>``,
  ``<|end|>`` (also eos), ``<|system|>``, ``<|user|>``, ``<|assistant|>``.
* Text is normalised and pre-tokenised exactly the way transformers' ``Qwen2Tokenizer`` rebuilds
  a tokenizer (the pipeline is taken from that class at build time, not re-typed). Reason: in
  transformers 5, ``AutoTokenizer`` on a folder whose ``config.json`` says ``qwen2`` always builds
  a ``Qwen2Tokenizer`` from ``tokenizer.json``'s vocab and merges and throws away its pipeline;
  with the same pipeline both families reload to identical ids.
* Every integer 10..999 is one token: an *added* (non-special) token that is also in the BPE vocab
  at a fixed id. Added tokens are matched before pre-tokenisation, so they survive the Qwen2
  rebuild, which splits digits one by one; 0..9 are single bytes anyway. Longer digit runs split
  left to right into 3-digit pieces ("2024" -> "202", "4").
* The SPARE step tag ``" ки"`` (leading space) is one added, non-special token in the vocab too,
  so ``decode(..., skip_special_tokens=True)`` keeps it. ``"+"`` and ``"-"`` are single bytes.
* No token is added automatically (no bos/eos post-processor); the chat template writes
  ``<|bos|>`` itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenizers import AddedToken, Tokenizer, models, trainers  # noqa: E402

from spare_train import synth  # noqa: E402

SPECIALS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
STEP_TAG = " ки"
VOCAB_SIZE = 4096
NUMBERS = [str(n) for n in range(10, 1000)]

#: Jinja chat template: <|bos|> then "<|role|>\ncontent<|end|>\n" per message; the assistant part
#: (content and <|end|>) is marked as a generation block for assistant-token masks.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('roles must be system, user or assistant, got ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|end|>' }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

MODEL_COMMON = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 1024,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "use_cache": True,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
MODEL_CONFIGS = {
    "llama": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **MODEL_COMMON,
        "num_key_value_heads": 4,
        "attention_bias": False,
        "mlp_bias": False,
    },
    "qwen2": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        **MODEL_COMMON,
        "num_key_value_heads": 2,
        "use_sliding_window": False,
    },
}


def corpus(gsm8k: str) -> list[str]:
    texts = [synth.DEFAULT_INSTRUCTION, synth.PREAMBLE]
    for row in synth.generate(synth.SynthConfig(num_questions=2000, seed=12345, preamble_rate=0.0, malformed_rate=0.0)):
        if row["output_idx"] == 0:
            texts += [row["question"], row["reference_ans"]]
        texts.append(row["grade_ans"])
    path = Path(gsm8k) if gsm8k else None
    if path is not None and path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += [row["question"], row["ground_truth"]]
            texts += [v["solution"] for v in row.values() if isinstance(v, dict) and "solution" in v]
    return texts


def qwen2_pipeline():
    """Normaliser, pre-tokeniser and decoder exactly as transformers' Qwen2Tokenizer builds them."""
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    ref = Qwen2Tokenizer(vocab={"<|pad|>": 0}, merges=[], unk_token=None, eos_token="<|pad|>",
                         pad_token="<|pad|>")
    b = ref.backend_tokenizer
    return b.normalizer, b.pre_tokenizer, b.decoder


def build_tokenizer(texts: list[str]) -> Tokenizer:
    normalizer, pre_tokenizer, decoder = qwen2_pipeline()
    tok = Tokenizer(models.BPE())
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoder
    from tokenizers.pre_tokenizers import ByteLevel

    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(NUMBERS) - 1,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    for token in NUMBERS + [STEP_TAG]:
        if token in vocab:
            raise RuntimeError(f"{token!r} unexpectedly learned by BPE")
        vocab[token] = len(vocab)
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"vocab has {len(vocab)} ids, expected {VOCAB_SIZE}: shrink or grow corpus")
    out = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    out.normalizer, out.pre_tokenizer, out.decoder = normalizer, pre_tokenizer, decoder
    out.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    out.add_tokens([AddedToken(t, special=False, normalized=False) for t in NUMBERS + [STEP_TAG]])
    return out


def tokenizer_config(tok: Tokenizer) -> dict:
    added = {}
    for t in SPECIALS + NUMBERS + [STEP_TAG]:
        added[str(tok.token_to_id(t))] = {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t in SPECIALS,
        }
    return {
        # Loaded as-is by PreTrainedTokenizerFast (transformers 4 and 5); under a qwen2
        # config.json transformers 5 rebuilds a Qwen2Tokenizer, which gives the same ids.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": "<|bos|>",
        "eos_token": "<|end|>",
        "pad_token": "<|pad|>",
        "unk_token": None,
        "additional_special_tokens": SPECIALS[3:],
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_COMMON["max_position_embeddings"],
        "padding_side": "right",
        "chat_template": CHAT_TEMPLATE,
    }


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "spare_train/assets/tiny"))
    parser.add_argument(
        "--gsm8k", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "model_solutions.jsonl")
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    tok = build_tokenizer(corpus(args.gsm8k))
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer" / "tokenizer.json"), pretty=True)
    write_json(out / "tokenizer" / "tokenizer_config.json", tokenizer_config(tok))
    for family, cfg in MODEL_CONFIGS.items():
        write_json(out / family / "config.json", cfg)
    print(f"wrote {out}: vocab {tok.get_vocab_size()}, ' ки' -> {tok.token_to_id(STEP_TAG)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
