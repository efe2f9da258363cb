"""Loading backbones: embedding growth, LoRA with trainable new-token rows, NF4 weights on CPU.

``tiny_folder`` (also used by the PRM, export and scoring tests) writes a random tiny causal LM
and a byte-level BPE tokenizer that splits the step tag, so the "tokenizer grew" path runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spare_train.models.backbone import BackboneConfig, LoraSettings, load_backbone, unwrap
from spare_train.models.checkpoint import trainable_names

CORPUS = [
    "Solve step by step. What is 2 + 3 * 4? 3 * 4 = 12. 2 + 12 = 14. The answer is 14.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "x - y = 7, so the answer is 10 - 3 = 7 + 0. Step one, step two, step three.",
]
CHAT = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"


def tiny_tokenizer_with_split_tag():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT
    return fast


def tiny_folder(path: Path, family: str = "llama", seed: int = 0) -> str:
    """A saved random ``family`` model (hidden 32, 2 layers) + tokenizer in ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = tiny_tokenizer_with_split_tag()
    kw = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **kw))
    else:
        model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **kw))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("tiny-llama"))


def test_full_finetune_grows_embeddings_and_trains_everything(folder):
    model = load_backbone(BackboneConfig(name_or_path=folder), vocab_size=330)
    assert model.get_input_embeddings().num_embeddings == 330
    assert model.get_output_embeddings().weight.shape[0] == 330
    assert all(p.requires_grad for p in model.parameters())
    # never shrinks (Qwen's matrix is larger than its tokenizer on purpose)
    assert load_backbone(BackboneConfig(name_or_path=folder), vocab_size=5).get_input_embeddings().num_embeddings == 320


def test_lora_trains_adapters_and_new_token_rows_only(folder):
    cfg = BackboneConfig(name_or_path=folder, lora=LoraSettings(r=4, alpha=8), gradient_checkpointing=True)
    model = load_backbone(cfg, vocab_size=322)
    names = trainable_names(model)
    assert any("lora_A" in n for n in names)
    assert any("trainable_tokens_delta" in n for n in names)
    assert not any(n.endswith("q_proj.base_layer.weight") for n in names)
    delta = next(p for n, p in model.named_parameters() if "trainable_tokens_delta" in n)
    assert delta.shape == (2, 32)  # the two added rows, not the whole matrix
    assert unwrap(model).is_gradient_checkpointing


@pytest.mark.slow
def test_nf4_loads_on_cpu_with_storage_in_compute_dtype(folder):
    import bitsandbytes as bnb

    cfg = BackboneConfig(name_or_path=folder, dtype="float32", quantization="nf4", lora=LoraSettings(r=4))
    model = load_backbone(cfg, vocab_size=321)
    layer = unwrap(model).model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.dtype == torch.float32  # bnb_4bit_quant_storage = compute dtype (FSDP-shardable)
    out = unwrap(model).model(input_ids=torch.tensor([[1, 5, 9]]))
    assert out[0].shape == (1, 3, 32)


def test_quantization_without_lora_is_refused(folder):
    with pytest.raises(ValueError, match="lora"):
        load_backbone(BackboneConfig(name_or_path=folder, quantization="nf4"))
