"""Offline RL for policies: objectives as components (:mod:`.objectives`) over pure losses
(:mod:`.losses`), the LightningModule, the reference-log-prob pre-pass and export. Recipes name
``spare_train.policy.PolicyModule``."""

from spare_train.policy.module import PolicyModule

__all__ = ["PolicyModule"]
