"""Head B, ``classifier`` (Qwen2.5-Math-PRM / TRL): a new 2-way head on the tag's hidden state.

``linear``: ``score = Linear(H, 2)``, the layout of transformers' ``*ForTokenClassification``, so
a merged export loads with ``AutoModelForTokenClassification``. ``mlp``: ``score =
Sequential(Linear(H, H), ReLU(), Linear(H, 2))``, Qwen2.5-Math-PRM's head, exported as
:class:`spare_train.prm.modeling.SparePRMForTokenClassification`. Initialised like transformers
heads: normal(0, ``init_std``) weights, zero bias.

An adapter export is a ``TOKEN_CLS`` peft adapter on that token-classification class: LoRA, the
trained ``score`` layer in ``modules_to_save`` and the new-token embedding rows, plus a
``config.json`` of the classifier (the base's config with ``num_labels=2``, or a ``spare_prm``
config wrapping it) so that ``AutoModelForTokenClassification.from_pretrained(base,
config=AutoConfig.from_pretrained(OUT))`` builds the right class before the adapter is applied.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn

from spare_train.prm.heads import PRMHead, adapter_snippet


def classifier_config(body_config: Any, classifier_type: str) -> Any:
    """The token-classification config of a head-B PRM on a body with ``body_config``."""
    labels = {"id2label": {0: "incorrect", 1: "correct"}, "label2id": {"incorrect": 0, "correct": 1}}
    if classifier_type == "mlp":
        from spare_train.prm.modeling import SparePRMConfig

        return SparePRMConfig(backbone_config=body_config, num_labels=2, **labels)
    return body_config.__class__.from_dict({**body_config.to_dict(), "num_labels": 2, **labels})


def _active(module: nn.Module) -> nn.Module:
    """The adapter's own copy inside a peft ``ModulesToSaveWrapper``, else ``module`` itself."""
    copies = getattr(module, "modules_to_save", None)
    return copies[module.active_adapters[0]] if copies is not None else module


class ClassifierHead(PRMHead):
    """A new 2-way classifier on the tag's hidden state (``linear`` or ``mlp``)."""

    name = "classifier"
    body = "body"

    def __init__(self, hidden_size: int, kind: Literal["linear", "mlp"] = "linear", init_std: float = 0.02) -> None:
        super().__init__()
        if kind == "linear":
            self.score: nn.Module = nn.Linear(hidden_size, 2)
        elif kind == "mlp":
            self.score = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, 2))
        else:
            raise ValueError(f"classifier kind must be 'linear' or 'mlp', not {kind!r}")
        self.kind = kind
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=init_std)
                nn.init.zeros_(m.bias)

    @classmethod
    def create(cls, model: Any, tokenizer: Any, classifier_type: str = "linear", **_: Any) -> ClassifierHead:
        config = model.config
        return cls(config.hidden_size, classifier_type, getattr(config, "initializer_range", 0.02))  # type: ignore[arg-type]

    @classmethod
    def wrap(cls, score: nn.Module) -> ClassifierHead:
        """A head around an existing ``score`` module (e.g. an exported ``*ForTokenClassification``'s)."""
        head = cls.__new__(cls)
        nn.Module.__init__(head)
        head.score, head.kind = score, "linear" if isinstance(score, nn.Linear) else "mlp"
        return head

    def forward(self, hidden: Tensor, model: Any = None) -> Tensor:
        first = self.score if isinstance(self.score, nn.Linear) else self.score[0]
        return self.score(hidden.to(first.weight.dtype)).float()

    def info(self, tokenizer: Any) -> dict[str, Any]:
        return {"classifier_type": self.kind}

    # ---- export --------------------------------------------------------------------------------
    def export(self, module: Any, out: Path, merge: bool) -> bool:
        from peft import PeftModel

        from spare_train.models.hf import save_causal_lm

        if isinstance(module.model, PeftModel) and not merge:
            self._save_adapter(module, out)
            return True
        save_causal_lm(self._merged_model(module), module.tokenizer, out, merge=True)
        return False

    def _merged_model(self, module: Any) -> Any:
        """Body + classifier as one ``*ForTokenClassification`` model (merged weights)."""
        from peft import PeftModel
        from transformers import AutoModelForTokenClassification

        import spare_train.prm.modeling  # noqa: F401  (registers the MLP-head class)

        body = module.model.merge_and_unload() if isinstance(module.model, PeftModel) else module.model
        model = AutoModelForTokenClassification.from_config(classifier_config(body.config, self.kind))
        state = {f"{model.base_model_prefix}.{k}": v for k, v in body.state_dict().items()}
        state.update(self.state_dict())
        model.load_state_dict(state, strict=True)
        return model.to(next(body.parameters()).dtype)

    def _save_adapter(self, module: Any, out: Path) -> None:
        """Rebuild the adapter on the class users load: the base reloaded as a token classifier,
        the embeddings grown to the tokenizer (as ``AutoPeftModel*`` does), the same LoRA settings
        with ``task_type=TOKEN_CLS`` (which puts ``score`` in ``modules_to_save``), then every
        trained tensor copied in by name."""
        from peft import TaskType, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
        from transformers import AutoConfig, AutoModelForTokenClassification

        import spare_train.prm.modeling  # noqa: F401  (registers the MLP-head class)
        from spare_train.models.backbone import DTYPES, resolve_model_path
        from spare_train.models.hf import record_base

        out.mkdir(parents=True, exist_ok=True)
        cfg, trained, tok = module.backbone_cfg, module.model, module.tokenizer
        base = resolve_model_path(cfg.name_or_path)
        trust = cfg.extra.get("trust_remote_code", False)
        config = classifier_config(AutoConfig.from_pretrained(base, trust_remote_code=trust), self.kind)
        config.save_pretrained(out)  # the base's vocabulary size: written before the embeddings grow
        model = AutoModelForTokenClassification.from_pretrained(
            base, config=copy.deepcopy(config), **{"dtype": DTYPES[cfg.dtype], "trust_remote_code": False, **cfg.extra}
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
        state.update({f"{root}score.{k}": v for k, v in self.score.state_dict().items()})
        result = set_peft_model_state_dict(model, state)
        if result.unexpected_keys:
            raise KeyError(f"adapter tensors the token classifier lacks: {result.unexpected_keys[:5]}")
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        record_base(out, cfg.name_or_path)

    # ---- load ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path, info: dict[str, Any], tokenizer: Any, kwargs: dict[str, Any]) -> tuple[Any, PRMHead]:
        from transformers import AutoModelForTokenClassification

        from spare_train.models.backbone import unwrap

        import spare_train.prm.modeling  # noqa: F401  (registers the MLP-head class)

        if info["adapter"]:
            from transformers import AutoConfig

            from spare_train.models.hf import load_adapter

            config = AutoConfig.from_pretrained(path, trust_remote_code=kwargs.get("trust_remote_code", False))
            model = load_adapter(path, AutoModelForTokenClassification, len(tokenizer), kwargs, config)
        else:
            model = AutoModelForTokenClassification.from_pretrained(path, **kwargs)
        return model, cls.wrap(_active(unwrap(model).score))

    @classmethod
    def snippet(cls, info: dict[str, Any]) -> tuple[list[str], str]:
        probs = "probs = model(ids).logits[0].softmax(-1)[:, 1]  # P(correct) at every token"
        register = ("import spare_train.prm.modeling  # registers SparePRMForTokenClassification",) if info["classifier_type"] == "mlp" else ()
        if info["adapter"]:  # the base built as the saved token-classifier config, then the adapter
            return adapter_snippet("AutoModelForTokenClassification", config=True, extra_imports=register), probs
        return ["from transformers import AutoModelForTokenClassification, AutoTokenizer", *register,
                "tok, model = AutoTokenizer.from_pretrained(PATH), AutoModelForTokenClassification.from_pretrained(PATH).eval()"], probs
