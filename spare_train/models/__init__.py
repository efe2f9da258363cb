"""What both training stacks share below their LightningModules: the backbone (LoRA/QLoRA), the
optimiser and schedule builder, the checkpoint callback and Hugging Face save/load helpers."""

from spare_train.models.backbone import BackboneConfig, LoraSettings, backbone_config, load_backbone
from spare_train.models.checkpoint import TrainingStateCheckpoint
from spare_train.models.optim import OptimConfig

__all__ = ["BackboneConfig", "LoraSettings", "OptimConfig", "TrainingStateCheckpoint", "backbone_config", "load_backbone"]
