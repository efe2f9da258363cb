"""DataModules: the shared read → label policies → report → split → tokenise path
(:mod:`.base`), PRM examples (:mod:`.prm`), policy examples and views (:mod:`.policy`,
:mod:`.views`), and the length-grouped DDP sampler (:mod:`.sampler`).

Recipes name ``spare_train.data.PRMDataModule`` or ``spare_train.data.PolicyDataModule``.
"""

from spare_train.data.base import AnnotationDataModule, split_by_group
from spare_train.data.policy import PolicyCollator, PolicyDataModule
from spare_train.data.prm import PRMDataModule, StepCollator
from spare_train.data.sampler import LengthGroupedSampler
from spare_train.data.views import FilterConfig, PairingConfig

__all__ = [
    "AnnotationDataModule", "FilterConfig", "LengthGroupedSampler", "PRMDataModule", "PairingConfig",
    "PolicyCollator", "PolicyDataModule", "StepCollator", "split_by_group",
]  # fmt: skip
