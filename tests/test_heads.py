"""PRM heads and loss on hand-made tensors and an in-memory tiny model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spare_train.labels import up_to_first_error
from spare_train.prm.heads import gather_steps, step_logits, step_scores
from spare_train.prm.heads.classifier import ClassifierHead
from spare_train.prm.heads.lm_tokens import LMTokenHead
from spare_train.prm.loss import last_step_mask, soft_cross_entropy

IGN = -100.0


def tiny_lm(family: str = "llama", vocab: int = 97, tie: bool = False, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    kw = dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=tie, max_position_embeddings=64,
    )  # fmt: skip
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**kw)).eval()
    return LlamaForCausalLM(LlamaConfig(**kw)).eval()


def test_gather_steps_picks_rows_per_sequence():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float).reshape(2, 5, 3)
    pos = torch.tensor([[1, 4], [0, 0]])
    out = gather_steps(hidden, pos)
    assert out.shape == (2, 2, 3)
    assert torch.equal(out[0, 1], hidden[0, 4]) and torch.equal(out[1, 0], hidden[1, 0])


def test_hard_labels_equal_torch_cross_entropy_with_weights_and_ignore():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 2)
    labels = torch.tensor([[1.0, 0.0, 1.0, IGN], [0.0, IGN, IGN, IGN], [1.0, 1.0, 0.0, 0.0]])
    w = (2.0, 0.5)
    got = soft_cross_entropy(logits, labels, class_weights=w)
    want = F.cross_entropy(
        logits.reshape(-1, 2), labels.reshape(-1).long().clamp_min(-100), weight=torch.tensor(w), ignore_index=-100
    )
    assert torch.allclose(got, want, atol=1e-6)


def test_soft_labels_hand_computed():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # P(correct) = 0.75
    loss = soft_cross_entropy(logits, torch.tensor([[0.6]]))
    assert loss.item() == pytest.approx(-(0.4 * math.log(0.25) + 0.6 * math.log(0.75)), abs=1e-6)


def test_nan_labels_and_all_ignored_give_zero_with_graph():
    logits = torch.randn(1, 2, 2, requires_grad=True)
    loss = soft_cross_entropy(logits, torch.tensor([[IGN, float("nan")]]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_last_step_only_uses_last_real_step():
    mask = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    assert last_step_mask(mask).tolist() == [[False, False, True], [True, False, False], [False, False, False]]
    logits = torch.randn(2, 3, 2)
    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, IGN, IGN]])
    got = soft_cross_entropy(logits, labels, last_step_only=True, step_mask=mask[:2])
    want = F.cross_entropy(torch.stack([logits[0, 2], logits[1, 0]]), torch.tensor([0, 1]))
    assert torch.allclose(got, want, atol=1e-6)
    # an unlabeled last step contributes nothing (no fall-back to an earlier step)
    labels2 = torch.tensor([[1.0, 0.0, IGN], [1.0, IGN, IGN]])
    got2 = soft_cross_entropy(logits, labels2, last_step_only=True, step_mask=mask[:2])
    assert torch.allclose(got2, F.cross_entropy(logits[1, :1], torch.tensor([1])), atol=1e-6)


def test_up_to_first_error_keeps_steps_through_the_first_wrong_one():
    labels = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, IGN, 1.0, 0.2], [0.0, 1.0, IGN, IGN], [1.0, 1.0, 1.0, 1.0]])
    assert up_to_first_error(labels).tolist() == [
        [True, True, False, False],
        [True, False, True, True],  # an ignored step neither counts nor ends the row
        [True, False, False, False],
        [True, True, True, True],
    ]
    logits = torch.randn(4, 4, 2)
    got = soft_cross_entropy(logits, labels, first_error_only=True)
    keep = up_to_first_error(labels)
    # the soft 0.2 label in row 1 is kept as a soft target
    soft = labels[keep]
    logp = logits[keep].log_softmax(-1)
    want = -(soft * logp[:, 1] + (1 - soft) * logp[:, 0]).mean()
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, soft_cross_entropy(logits, labels), atol=1e-4)


def test_step_scores_is_probability_of_correct():
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(4.0)]]])
    assert step_scores(logits)[0].tolist() == pytest.approx([0.5, 0.8])


@pytest.mark.parametrize("family,tie", [("llama", False), ("qwen2", True)])
def test_lm_token_head_equals_full_logits(family, tie):
    model = tiny_lm(family, tie=tie)
    ids = torch.randint(0, 97, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    pos = torch.tensor([[3, 7, 11], [2, 8, 0]])
    neg, good = 5, 9
    got = step_scores(step_logits(model, LMTokenHead(neg, good), {"input_ids": ids, "attention_mask": mask, "label_positions": pos}))
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits  # [B, L, V]
    want = full[torch.arange(2)[:, None], pos][..., [neg, good]].softmax(-1)[..., 1]
    assert torch.allclose(got, want, atol=1e-5)


def test_lm_token_head_equals_full_logits_under_lora():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_lm(), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    ids = torch.randint(0, 97, (1, 10))
    pos = torch.tensor([[4, 9]])
    got = step_scores(step_logits(model, LMTokenHead(1, 2), {"input_ids": ids, "label_positions": pos}))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        with model.disable_adapter():
            no_lora = model(input_ids=ids).logits
    assert not torch.allclose(full, no_lora)  # adapters are active in both paths
    want = full[0, pos[0]][:, [1, 2]].softmax(-1)[:, 1]
    assert torch.allclose(got[0], want, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_classifier_head_shapes_and_grad(kind):
    head = ClassifierHead(8, kind)
    h = torch.randn(2, 3, 8)
    logits = head(h)
    assert logits.shape == (2, 3, 2)
    loss = soft_cross_entropy(logits, torch.tensor([[1.0, 0.0, IGN], [0.3, IGN, IGN]]))
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())
    assert sum(p.numel() for p in head.parameters()) == (18 if kind == "linear" else 8 * 8 + 8 + 18)


def test_head_registry_names_both_conventions_and_refuses_unknown():
    from spare_train.prm.heads import HEADS, get_head

    assert HEADS == {"lm_tokens": LMTokenHead, "classifier": ClassifierHead}
    assert get_head("classifier") is ClassifierHead
    with pytest.raises(ValueError, match="unknown PRM head 'ranker'"):
        get_head("ranker")


def test_packed_rows_gather_each_example_from_its_row():
    hidden = torch.arange(2 * 6 * 1, dtype=torch.float).reshape(2, 6, 1)
    pos = torch.tensor([[1, 2], [5, 0], [0, 3]])
    rows = torch.tensor([0, 0, 1])
    assert gather_steps(hidden, pos, rows)[..., 0].tolist() == [[1.0, 2.0], [5.0, 0.0], [6.0, 9.0]]
