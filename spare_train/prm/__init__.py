"""Process reward models: heads (:mod:`.heads`), loss, metrics, the LightningModule, scoring,
evaluation and export. Recipes name ``spare_train.prm.PRMModule``."""

from spare_train.prm.module import PRMModule
from spare_train.prm.scoring import PRM, load_prm

__all__ = ["PRM", "PRMModule", "load_prm"]
