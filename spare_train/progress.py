"""Progress a user can read, in a terminal and in a log file.

In a terminal, training shows Lightning's rich progress bar, corrected: the epoch count is the
number of epochs the run will really take (``max_steps`` usually ends it long before
``max_epochs``), the bar's total is the batches left before ``max_steps`` (so its time estimate
is right), and the logger's version (``v_num: 0.000``) is left out.

When stderr is not a terminal (CI, ``nohup``, ``make demo > log``) a bar prints carriage returns
or one final frame, so :class:`LineProgressBar` prints one plain line every
:func:`interval` seconds instead (``SPARE_TRAIN_PROGRESS_EVERY``, default 30), plus a line per
validation and at the end. :func:`track` does the same for loops outside Lightning (scoring).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

T = TypeVar("T")


def interval() -> float:
    """Seconds between progress lines when stderr is not a terminal."""
    return float(os.environ.get("SPARE_TRAIN_PROGRESS_EVERY", "30"))


def is_terminal() -> bool:
    return sys.stderr.isatty()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def planned_epochs(trainer: Any) -> int | None:
    """Epochs the run will take: ``max_epochs``, or fewer when ``max_steps`` ends it first
    (``None`` when neither bounds it, e.g. an iterable dataset without ``max_steps``)."""
    batches = trainer.num_training_batches
    epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
    if trainer.max_steps > 0 and batches and math.isfinite(batches):
        by_steps = math.ceil(trainer.max_steps / math.ceil(batches / trainer.accumulate_grad_batches))
        epochs = by_steps if epochs is None else min(epochs, by_steps)
    return epochs


def batches_this_epoch(trainer: Any) -> int | float:
    """Training batches of the current epoch, stopping where ``max_steps`` ends the run."""
    batches = trainer.num_training_batches
    if trainer.max_steps > 0:
        left = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
        return min(batches, left + trainer.fit_loop.epoch_loop.batch_progress.current.ready)
    return batches


def _no_version(metrics: dict[str, Any]) -> dict[str, Any]:
    metrics.pop("v_num", None)
    return metrics


class SpareRichProgressBar(RichProgressBar):
    """Lightning's rich bar with the epoch count, total and metrics described in the module docstring."""

    @property
    def total_train_batches(self) -> int | float:
        return batches_this_epoch(self.trainer)

    def _get_train_description(self, current_epoch: int) -> str:
        epochs = planned_epochs(self.trainer)
        text = f"Epoch {current_epoch + 1}" + (f"/{epochs}" if epochs else "")
        return f"{text:{len(self.validation_description)}}"

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        return _no_version(super().get_metrics(trainer, pl_module))


class LineProgressBar(ProgressBar):
    """Progress for logs: one plain line every ``every`` seconds instead of a bar.

    Each line gives the epoch, optimizer step, rate, time left and the metrics the module shows in
    the bar; one line per validation; one at the end.

    Args:
        every: seconds between lines.
    """

    def __init__(self, every: float | None = None) -> None:
        super().__init__()
        self.every = interval() if every is None else every
        self._enabled = True
        self._start = self._last = 0.0
        self._first_step = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled:
            print(text, file=sys.stderr, flush=True)

    def _metrics(self, trainer: Any, pl_module: Any) -> str:
        items = _no_version(self.get_metrics(trainer, pl_module))
        return "  ".join(f"{k} {float(v):.4g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in items.items())

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = self._last = time.monotonic()
        self._first_step = trainer.global_step
        epochs = planned_epochs(trainer)
        total = trainer.estimated_stepping_batches
        self._print(f"training: {total} optimizer steps, {epochs or '?'} epoch(s) of {trainer.num_training_batches} "
                    f"batches; a progress line every {self.every:g}s")  # fmt: skip

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        rate = (step - self._first_step) / max(now - self._start, 1e-9)
        left = (total - step) / rate if rate > 0 else float("inf")
        epochs = planned_epochs(trainer)
        epoch = f"epoch {trainer.current_epoch + 1}" + (f"/{epochs}" if epochs else "")
        pct = f" ({100 * step / total:.0f}%)" if math.isfinite(total) and total else ""
        self._print(f"{epoch}  step {step}/{total}{pct}  {rate:.3g} steps/s  "
                    f"elapsed {_duration(now - self._start)}  left {_duration(left)}  "
                    f"{self._metrics(trainer, pl_module)}".rstrip())  # fmt: skip

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
        text = "  ".join(f"{k} {v:.4g}" for k, v in list(shown.items())[:8])
        self._print(f"validation at step {trainer.global_step}: {text}")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._print(f"training done: {trainer.global_step} optimizer steps in {_duration(time.monotonic() - self._start)}")


def progress_bar() -> ProgressBar:
    """The progress callback for this process: the rich bar in a terminal, lines otherwise."""
    return SpareRichProgressBar() if is_terminal() else LineProgressBar()


def track(items: Iterable[T], total: int, desc: str, units: str = "batches") -> Iterator[T]:
    """Iterate ``items`` with a tqdm bar in a terminal, or a line every :func:`interval` seconds."""
    if is_terminal():
        from tqdm.auto import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=" " + units)
        return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= interval() and done < total:
            last = now
            rate = done / (now - start)
            print(f"{desc}: {done}/{total} {units} ({100 * done / total:.0f}%)  {rate:.3g} {units}/s  "
                  f"left {_duration((total - done) / rate)}", file=sys.stderr, flush=True)  # fmt: skip
    print(f"{desc}: {done}/{total} {units} in {_duration(time.monotonic() - start)}", file=sys.stderr, flush=True)
