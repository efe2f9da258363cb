"""spare-train: process reward models and offline RL from step-level annotations."""

from spare_train.quiet import defer_bitsandbytes
from spare_train.records import Prompt, Source, StepRecord

defer_bitsandbytes()  # peft would import bitsandbytes on every command; see spare_train.quiet

__version__ = "0.1.0"

__all__ = ["Prompt", "Source", "StepRecord", "load_prm", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import spare_train` stays light (no torch/transformers import for data work).
    if name == "load_prm":
        from spare_train.prm.scoring import load_prm

        return load_prm
    raise AttributeError(name)
