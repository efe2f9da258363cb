"""``spare-train export CKPT OUT [--merge]``: a Lightning checkpoint as a Hugging Face folder.

What lands in ``OUT``:

* the model, as ``model.safetensors`` (``--merge``: LoRA folded into full weights) or as a peft
  adapter whose ``adapter_config.json`` names its base model;
* the tokenizer, including a step-tag token that training added;
* ``spare_prm.json``: head convention, label/tag token ids and the prompt format, read by
  :func:`spare_train.scoring.load_prm`;
* ``README.md``: a model card with a plain-transformers scoring snippet.

Head A (``lm_tokens``) exports as the backbone's ``*ForCausalLM``; a linear head B as its
``*ForTokenClassification`` (``score`` layer); an MLP head B as
:class:`spare_train.modeling_prm.SparePRMForTokenClassification`. Frozen weights are reloaded
unquantised from the base model, so a QLoRA run exports full-precision (``backbone.dtype``) weights.

A head-B adapter is a ``TOKEN_CLS`` peft adapter on that token-classification class: LoRA, the
trained ``score`` layer in ``modules_to_save`` and the new-token embedding rows, plus a
``config.json`` of the classifier (the base's config with ``num_labels=2``, or a ``spare_prm``
config wrapping it) so that ``AutoModelForTokenClassification.from_pretrained(base,
config=AutoConfig.from_pretrained(OUT))`` builds the right class before the adapter is applied.

An :class:`spare_train.offline_rl.OfflineRLModule` checkpoint (a trained policy, recognised by the
``spare_offline_rl`` entry its ``on_save_checkpoint`` writes) exports as the policy's
``*ForCausalLM`` (``--merge``) or a peft causal-LM adapter, plus its tokenizer, through
:meth:`OfflineRLModule.export`; no ``spare_prm.json`` or PRM model card.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

CARD_NAME = "spare_prm.json"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint, loaded without unpickling arbitrary objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_causal_lm(model: Any, tokenizer: Any, out: str | Path, merge: bool) -> None:
    """Save a (possibly peft-wrapped) causal LM and its tokenizer as a Hugging Face folder.

    ``merge``: fold adapters (and trained new-token rows) into the weights; otherwise a peft model
    is saved as an adapter (``adapter_config.json`` names the base; load it with
    ``peft.AutoPeftModelForCausalLM``, which grows the embeddings to the saved tokenizer).
    Always safetensors. Shared by PRM and policy exports.
    """
    from peft import PeftModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel) and merge:
        model = model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _init_args(cls: type, ckpt: dict[str, Any], dtype: str | None) -> dict[str, Any]:
    """``cls``'s init args from a checkpoint, its backbone rebuilt unquantised (export needs no
    quantisation and no gradient checkpointing)."""
    from spare_train.prm import backbone_config

    params = inspect.signature(cls.__init__).parameters
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if k in params}
    bb = backbone_config(hp.get("backbone"))
    bb.quantization, bb.gradient_checkpointing = None, False
    if dtype:
        bb.dtype = dtype
    hp["backbone"] = bb
    return hp


def module_from_checkpoint(ckpt: dict[str, Any], dtype: str | None = None) -> Any:
    """Rebuild the ``PRMModule`` of a checkpoint with unquantised frozen weights, trained tensors loaded."""
    from spare_train.prm import PRMModule

    hp = _init_args(PRMModule, ckpt, dtype)
    bb = hp["backbone"]
    module = PRMModule(**hp)
    module.on_load_checkpoint(ckpt)
    module.configure_model()
    result = module.load_state_dict(ckpt["state_dict"], strict=bb.lora is None)
    if result.unexpected_keys:
        raise KeyError(f"checkpoint tensors the rebuilt model lacks: {result.unexpected_keys[:5]}")
    return module.eval()


def is_policy_checkpoint(ckpt: dict[str, Any]) -> bool:
    """Whether ``ckpt`` holds an ``OfflineRLModule`` (a policy) rather than a ``PRMModule``."""
    from spare_train.offline_rl import CHECKPOINT_MARKER

    return CHECKPOINT_MARKER in ckpt or "objective" in ckpt.get("hyper_parameters", {})


def policy_from_checkpoint(ckpt: dict[str, Any], dtype: str | None = None) -> tuple[Any, Any]:
    """Rebuild the ``OfflineRLModule`` of a checkpoint (unquantised, trained tensors loaded) and its tokenizer."""
    from spare_train.backbone import trainable_names
    from spare_train.offline_rl import CHECKPOINT_MARKER, OfflineRLModule
    from spare_train.tokenize import load_tokenizer

    hp = _init_args(OfflineRLModule, ckpt, dtype)
    bb = hp["backbone"]
    hp["reference"] = "precomputed"  # export needs no reference model: no frozen copy is built
    module = OfflineRLModule(**hp)
    module.configure_model()
    result = module.load_state_dict(ckpt["state_dict"], strict=bb.lora is None)
    if result.unexpected_keys:
        raise KeyError(f"checkpoint tensors the rebuilt policy lacks: {result.unexpected_keys[:5]}")
    missing = trainable_names(module) & set(result.missing_keys)
    if missing:
        raise KeyError(f"trained tensors the checkpoint lacks: {sorted(missing)[:5]}")
    tok = load_tokenizer(ckpt.get(CHECKPOINT_MARKER, {}).get("tokenizer") or bb.name_or_path)
    if tok.pad_token_id is None:  # as OfflineRLDataModule trains with it
        tok.pad_token = tok.eos_token
    return module.eval(), tok


def classifier_config(body_config: Any, classifier_type: str) -> Any:
    """The token-classification config of a head-B PRM on a body with ``body_config``."""
    labels = {"id2label": {0: "incorrect", 1: "correct"}, "label2id": {"incorrect": 0, "correct": 1}}
    if classifier_type == "mlp":
        from spare_train.modeling_prm import SparePRMConfig

        return SparePRMConfig(backbone_config=body_config, num_labels=2, **labels)
    return body_config.__class__.from_dict({**body_config.to_dict(), "num_labels": 2, **labels})


def _classifier_model(module: Any) -> Any:
    """Body + classifier as one ``*ForTokenClassification`` model (merged weights)."""
    from peft import PeftModel
    from transformers import AutoModelForTokenClassification

    import spare_train.modeling_prm  # noqa: F401  (registers the MLP-head class)

    body = module.model.merge_and_unload() if isinstance(module.model, PeftModel) else module.model
    model = AutoModelForTokenClassification.from_config(classifier_config(body.config, module.hparams.classifier_type))
    state = {f"{model.base_model_prefix}.{k}": v for k, v in body.state_dict().items()}
    state.update(module.head.state_dict())
    model.load_state_dict(state, strict=True)
    return model.to(next(body.parameters()).dtype)


def save_classifier_adapter(module: Any, out: str | Path) -> None:
    """Save a LoRA-trained head-B ``PRMModule`` as a ``TOKEN_CLS`` peft adapter (see the module docstring).

    Training wraps a headless body (``AutoModel``) and keeps the head apart, so the adapter is
    rebuilt on the class users load: the base reloaded as a token classifier, the embeddings grown
    to the tokenizer (as ``AutoPeftModel*`` does), the same LoRA settings with ``task_type=TOKEN_CLS``
    (which puts ``score`` in ``modules_to_save``), then every trained tensor copied in by name.
    """
    from peft import TaskType, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoConfig, AutoModelForTokenClassification

    import spare_train.modeling_prm  # noqa: F401  (registers the MLP-head class)
    from spare_train.backbone import DTYPES, resolve_model_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg, trained, tok = module.backbone_cfg, module.model, module.tokenizer
    base = resolve_model_path(cfg.name_or_path)
    config = classifier_config(AutoConfig.from_pretrained(base), module.hparams.classifier_type)
    config.save_pretrained(out)  # the base's vocabulary size: written before the embeddings grow
    model = AutoModelForTokenClassification.from_pretrained(
        base, config=copy.deepcopy(config), **{"dtype": DTYPES[cfg.dtype], **cfg.extra}
    )
    if len(tok) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tok))
    peft_config = copy.deepcopy(trained.peft_config[trained.active_adapter])
    peft_config.task_type = TaskType.TOKEN_CLS
    model = get_peft_model(model, peft_config)
    root = "base_model.model."  # + the body's path: "" in training, "model." in the classifier
    state = {
        f"{root}{model.get_base_model().base_model_prefix}.{k[len(root):]}": v
        for k, v in get_peft_model_state_dict(trained).items()
    }
    state.update({f"{root}score.{k}": v for k, v in module.head.score.state_dict().items()})
    result = set_peft_model_state_dict(model, state)
    if result.unexpected_keys:
        raise KeyError(f"adapter tensors the token classifier lacks: {result.unexpected_keys[:5]}")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def prm_info(module: Any, adapter: bool) -> dict[str, Any]:
    """The ``spare_prm.json`` contents: everything scoring needs besides the weights."""
    from spare_train.heads import label_token_ids

    hp, tok, fmt = module.hparams, module.tokenizer, module.format_config
    info: dict[str, Any] = {
        "head": hp.head,
        "classifier_type": hp.classifier_type if hp.head == "classifier" else None,
        "score": "softmax over (incorrect, correct) logits at each step-tag token; score = P(correct)",
        "format": asdict(fmt),
        "tag_id": tok.encode(fmt.step_tag, add_special_tokens=False)[0],
        "adapter": adapter,
        "base_model": module.backbone_cfg.name_or_path,
    }
    if hp.head == "lm_tokens":
        info["label_tokens"] = list(hp.label_tokens)
        info["label_token_ids"] = list(label_token_ids(tok, tuple(hp.label_tokens)))
    return info


def export_module(module: Any, out: str | Path, merge: bool = True) -> Path:
    """Write ``module`` (a configured ``PRMModule``) to ``out``; see the module docstring."""
    from peft import PeftModel

    out = Path(out)
    adapter = isinstance(module.model, PeftModel) and not merge
    if module.hparams.head == "lm_tokens":
        save_causal_lm(module.model, module.tokenizer, out, merge)
    elif adapter:
        save_classifier_adapter(module, out)
    else:
        save_causal_lm(_classifier_model(module), module.tokenizer, out, merge=True)
    info = prm_info(module, adapter)
    (out / CARD_NAME).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    (out / "README.md").write_text(model_card(info))
    return out


def _snippet(info: dict[str, Any]) -> str:
    special = info["format"]["template"] == "plain"  # chat templates write their own BOS
    tok_line = f'ids = tok(text, return_tensors="pt", add_special_tokens={special}).input_ids  # text: see "Input format"'
    tag = info["tag_id"]
    if info["head"] == "lm_tokens":
        neg, pos = info["label_token_ids"]
        if info["adapter"]:
            imports = "from peft import AutoPeftModelForCausalLM as Model; from transformers import AutoTokenizer"
        else:
            imports = "from transformers import AutoModelForCausalLM as Model, AutoTokenizer"
        probs = f"probs = model(ids).logits[0][:, [{neg}, {pos}]].softmax(-1)[:, 1]  # P(correct) at every token"
    else:
        probs = "probs = model(ids).logits[0].softmax(-1)[:, 1]  # P(correct) at every token"
        if info["adapter"] and info["classifier_type"] == "mlp":  # no Auto class builds the MLP head from the base
            return "\n".join([*_mlp_adapter_lines(info), tok_line, probs, _steps_line(tag)])
        if info["adapter"]:
            imports = "from peft import AutoPeftModelForTokenClassification as Model; from transformers import AutoTokenizer"
        else:
            imports = "from transformers import AutoModelForTokenClassification as Model, AutoTokenizer"
        if info["classifier_type"] == "mlp":
            imports += "; import spare_train.modeling_prm  # registers SparePRMForTokenClassification"
    return "\n".join(
        [
            imports,
            'tok, model = AutoTokenizer.from_pretrained(PATH), Model.from_pretrained(PATH).eval()',
            tok_line,
            probs,
            _steps_line(tag),
        ]
    )


def _steps_line(tag: int) -> str:
    return f"step_scores = probs[ids[0] == {tag}].tolist()  # one score per step, in order"


def _mlp_adapter_lines(info: dict[str, Any]) -> list[str]:
    """Load an MLP-head adapter: the base as ``SparePRMForTokenClassification`` (config from PATH), then peft."""
    from spare_train.backbone import resolve_model_path

    base = resolve_model_path(info["base_model"])
    return [
        "from peft import PeftModel; import spare_train.modeling_prm  # registers SparePRMForTokenClassification\n"
        "from transformers import AutoConfig, AutoModelForTokenClassification as Model, AutoTokenizer",
        f"tok, base = AutoTokenizer.from_pretrained(PATH), Model.from_pretrained({base!r}, config=AutoConfig.from_pretrained(PATH))",
        "base.resize_token_embeddings(max(len(tok), base.get_input_embeddings().num_embeddings))  # rows for an added tag",
        "model = PeftModel.from_pretrained(base, PATH).eval()",
    ]


def _format_text(info: dict[str, Any]) -> str:
    fmt = info["format"]
    steps = f'steps_text = "".join(step + {fmt["step_tag"]!r} + {fmt["step_separator"]!r} for step in steps)'
    if fmt["template"] == "chat":
        build = (
            'messages = ([{"role": "system", "content": instruction}] if instruction else []) + [\n'
            '    {"role": "user", "content": question}, {"role": "assistant", "content": steps_text}]\n'
            "text = tok.apply_chat_template(messages, tokenize=False)"
        )
    else:
        build = 'text = "\\n\\n".join(x for x in (instruction, question) if x) + "\\n" + steps_text'
    return f"{steps}\n{build}"


def model_card(info: dict[str, Any]) -> str:
    """README.md of an exported PRM."""
    fmt = info["format"]
    head = (
        f"LM-token head: the causal LM's logits of {info['label_tokens'][0]!r} (incorrect) and "
        f"{info['label_tokens'][1]!r} (correct) at each tag token (ids {info['label_token_ids']})"
        if info["head"] == "lm_tokens"
        else f"{info['classifier_type']} token-classification head (labels 0 = incorrect, 1 = correct) at each tag token"
    )
    kind = "a PEFT adapter on `" + info["base_model"] + "`" if info["adapter"] else "full (merged) weights"
    if info["adapter"] and info["head"] == "classifier":
        kind += (
            " (LoRA, the trained `score` layer in `modules_to_save`, any new token rows; `config.json` is the"
            " token classifier's config, which `AutoModelForTokenClassification.from_pretrained(base, config=…)` takes)"
        )
    meta = f"base_model: {info['base_model']}\n" if info["adapter"] else ""
    return f"""---
library_name: {"peft" if info["adapter"] else "transformers"}
{meta}tags: [process-reward-model, prm, spare-train]
---
# Process reward model (spare-train)

Scores each step of a step-by-step solution with P(step is correct). Weights: {kind}.

* **Head:** {head}; a step's score is the softmax probability of *correct* over the two logits.
* **Step tag:** `{fmt["step_tag"]!r}` (token id {info["tag_id"]}), written after every step, followed by `{fmt["step_separator"]!r}`.
* **Prompt format:** `{fmt["template"]}` (max {fmt["max_length"]} tokens; whole trailing steps beyond it were dropped in training).

## Input format

```python
{_format_text(info)}
```

Text after the last tag does not change any score (the model is causal).

## Scoring with plain transformers

```python
{_snippet(info)}
```

With spare-train installed: `spare_train.load_prm(PATH).score(records)` or
`spare-train score --model PATH --input FILE --output scores.jsonl`.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spare-train export", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="Lightning checkpoint (.ckpt) of a PRMModule or an OfflineRLModule")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--merge", action="store_true", help="fold LoRA into the weights (else save an adapter)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weight dtype (default: training's)")
    args = parser.parse_args(argv)
    ckpt = load_checkpoint(args.ckpt)
    if is_policy_checkpoint(ckpt):
        policy, tok = policy_from_checkpoint(ckpt, args.dtype)
        policy.export(args.out, tok, merge=args.merge or policy.backbone_cfg.lora is None)
        print(f"exported policy to {args.out}")
        return 0
    module = module_from_checkpoint(ckpt, args.dtype)
    out = export_module(module, args.out, merge=args.merge or module.backbone_cfg.lora is None)
    print(f"exported to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
