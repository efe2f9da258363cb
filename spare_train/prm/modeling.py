"""A transformers model class for PRMs with an MLP classifier head (Qwen2.5-Math-PRM's layout).

Importing this module registers ``model_type="spare_prm"`` with ``AutoConfig`` and
``AutoModelForTokenClassification``, so an exported MLP-head PRM loads with::

    import spare_train.prm.modeling  # registers the class; no trust_remote_code needed
    model = AutoModelForTokenClassification.from_pretrained(folder)

The config wraps the backbone's own config (``backbone_config``, any decoder ``AutoModel``
knows), so the same class serves Llama, Qwen2, Mistral… bodies. Linear heads do not need this:
they export as the backbone family's own ``*ForTokenClassification``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import TokenClassifierOutput


class SparePRMConfig(PreTrainedConfig):
    """``backbone_config``: the decoder's config; ``num_labels`` is 2 (incorrect, correct)."""

    model_type = "spare_prm"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    backbone_config: dict | PreTrainedConfig | None = None
    classifier_type: str = "mlp"


class SparePRMForTokenClassification(PreTrainedModel):
    """Decoder body + ``score = Sequential(Linear(H, H), ReLU(), Linear(H, 2))`` on every token.

    ``forward`` returns per-token logits ``[B, L, 2]``; a step's score is
    ``softmax(logits[b, tag_position])[1]``.
    """

    config_class = SparePRMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: SparePRMConfig) -> None:
        super().__init__(config)
        hidden = config.backbone_config.hidden_size
        self.model = AutoModel.from_config(config.backbone_config)
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, config.num_labels))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def forward(
        self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, **kwargs: Any
    ) -> TokenClassifierOutput:
        kwargs.pop("labels", None)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[0]
        return TokenClassifierOutput(logits=self.score(hidden))


AutoConfig.register("spare_prm", SparePRMConfig, exist_ok=True)
AutoModelForTokenClassification.register(SparePRMConfig, SparePRMForTokenClassification, exist_ok=True)
