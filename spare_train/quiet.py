"""Third-party noise a user cannot act on: deferred, silenced, or explained here.

* **bitsandbytes** is needed only for quantised weights (QLoRA ``nf4``, ``int8``) and 8-bit
  optimisers, but ``peft.helpers`` imports it eagerly for one helper spare-train never calls, so
  every command that touched peft paid for it (seconds: it imports ``torch._inductor``) and, on
  machines whose CUDA it does not match, printed its kernels warning. :func:`defer_bitsandbytes`
  (installed when ``spare_train`` is imported) makes that one import fail as if the package were
  absent; transformers, peft's quantised layers and our 8-bit optimiser import it as usual when a
  recipe asks for them.
* **Lightning's adverts and notices** (the litlogger / litmodels "💡 Tip" lines, "tensorboardX has
  been removed": runs without a ``logger`` in their recipe log CSV files under
  ``trainer.default_root_dir``, which is what that notice says; "modules in eval mode": the frozen
  reference copy of ``reference: copy`` is in eval mode on purpose; "dataloader is not resumable":
  our DataModules restore the sampler position of a mid-epoch checkpoint themselves) and
  deprecation warnings raised
  *inside* Lightning / peft about torch / transformers APIs (nothing a user's code calls) are
  silenced by :func:`silence_third_party`, which the entry points call (``spare-train``, the
  demos); importing spare_train as a library changes no warning filter.
* **Progress bars of transformers / datasets** ("Loading weights", "Map") are turned off when
  stderr is not a terminal, where a bar is one line of carriage returns; our own progress then
  prints plain lines (:mod:`spare_train.progress`).
"""

from __future__ import annotations

import importlib.abc
import logging
import os
import sys
import warnings

#: modules whose import-time ``import bitsandbytes`` is deferred (each guards it with ``except ImportError``)
EAGER_BITSANDBYTES_IMPORTERS = frozenset({"peft.helpers"})

#: warning messages (regex, matched at the start) raised inside third-party code
SILENCED_WARNINGS = (
    r"Starting from v1\.9\.0, `tensorboardX` has been removed",  # we log CSV unless a recipe names a logger
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's own use of a torch API
    r"`is_gradient_checkpointing` is deprecated",  # peft's own use of a transformers API
    r"Found \d+ module\(s\) in eval mode at the start of training",  # the frozen reference copy, on purpose
    # our DataModules keep the sampler's position in the checkpoint and resume mid-epoch exactly
    # (AnnotationDataModule.state_dict); Lightning only sees a loader without state_dict
    r"You're resuming from a checkpoint that ended before the epoch ended and your dataloader is not resumable",
)
#: Lightning's INFO-level adverts and notices (logged through these loggers)
_TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                "lightning.pytorch.trainer.connectors.checkpoint_connector")  # fmt: skip
#: their messages that start so (the checkpoint notice is about *saving* a full checkpoint, which
#: reads like a warning that loading is unsafe; our loads are always ``weights_only=True``)
_SILENCED_INFO = ("💡 Tip", "`weights_only` was not set, defaulting to `False`")


def _importer() -> str:
    """``__name__`` of the module whose ``import`` statement is being resolved."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "") if frame is not None else ""


class _DeferBitsandbytes(importlib.abc.MetaPathFinder):
    """``import bitsandbytes`` from a module in :data:`EAGER_BITSANDBYTES_IMPORTERS` fails with
    ``ModuleNotFoundError``; every other lookup (``find_spec`` checks included) goes on as usual."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "bitsandbytes" and _importer() in EAGER_BITSANDBYTES_IMPORTERS:
            raise ModuleNotFoundError("bitsandbytes is imported when a quantised model needs it", name=name)
        return None


def defer_bitsandbytes() -> None:
    """Install :class:`_DeferBitsandbytes` once (it only matters before peft is imported)."""
    if not any(isinstance(f, _DeferBitsandbytes) for f in sys.meta_path):
        sys.meta_path.insert(0, _DeferBitsandbytes())


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_SILENCED_INFO)


def silence_third_party() -> None:
    """Silence the messages listed in this module's docstring (idempotent)."""
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:  # already imported: its switch was read at import
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        if "datasets" in sys.modules:
            import datasets

            datasets.disable_progress_bars()
    for pattern in SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in _TIP_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in log.filters):
            log.addFilter(_NoTips())
