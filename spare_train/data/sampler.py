"""Length-grouped batches that shard across DDP ranks: less padding, and ranks that wait little."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler


class LengthGroupedSampler(DistributedSampler):
    """Yields indices so that consecutive ``batch_size`` chunks have similar lengths, sharded by rank.

    Indices are shuffled (seed + epoch), cut into mega-batches of about ``mega_batch_mult``
    batches, sorted by length inside each and cut into batches. Neighbouring batches are grouped
    into blocks of ``step_batches`` (the batches of one optimizer step over all ranks: GPUs ×
    gradient accumulation) and the blocks are shuffled; batch ``i`` then goes to rank
    ``i % num_replicas``. So:

    * the batches of one optimizer step are neighbours in a sorted mega-batch: similar lengths,
      so ranks wait little for each other;
    * steps come in random order, not in long-to-short sweeps through each mega-batch (a
      training-order bias that hurt the tiny PRM; see docs/benchmarks.md);
    * every rank yields the same number of batches (the last block is filled by repeating indices);
    * the batch order depends on ``step_batches`` only: N processes with accumulation A see at
      each step the batches one process with accumulation N×A sees (up to the padding of the
      epoch's last step), so changing the GPU count keeps the data, and DDP and FSDP are tested
      against a single process that way. With one process and no accumulation the order is the
      plain shuffle of batches.

    It subclasses ``DistributedSampler`` so Lightning leaves it in place under DDP; ``set_epoch``
    reshuffles. :meth:`resume` skips the batches of an epoch a checkpoint already trained on.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        mega_batch_mult: int = 50,
        step_batches: int | None = None,
    ):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.step_batches = step_batches or num_replicas
        if self.step_batches % num_replicas:
            raise ValueError(f"step_batches ({self.step_batches}) must be a multiple of num_replicas ({num_replicas})")
        k = self.step_batches
        self.mega = batch_size * (-(-max(1, mega_batch_mult) // k) * k)  # whole blocks per mega-batch
        blocks = max(1, -(-len(self.lengths) // (batch_size * k)))
        self.total_size = blocks * batch_size * k
        self.num_samples = self.total_size // num_replicas
        self.num_steps = self.num_samples // batch_size  # batches per rank
        self._resume: tuple[int, int] | None = None
        self.started = False  # an iteration has begun (its skip, if any, is decided)

    def global_batches(self) -> list[list[int]]:
        """Every rank's batches of the current epoch, in order (rank ``r`` takes ``r::num_replicas``)."""
        n = len(self.lengths)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        pad = self.total_size - n  # repeat indices so every rank gets the same number of batches
        order += (order * (pad // max(n, 1) + 1))[:pad]
        batches: list[list[int]] = []
        for m in range(0, len(order), self.mega):
            chunk = sorted(order[m : m + self.mega], key=lambda i: -self.lengths[i])
            batches += [chunk[b : b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
        if self.shuffle:  # blocks of one step's neighbouring batches, in random order
            k = self.step_batches
            blocks = [batches[b : b + k] for b in range(0, len(batches), k)]
            batches = [batch for i in torch.randperm(len(blocks), generator=g).tolist() for batch in blocks[i]]
        return batches

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch."""
        return self.global_batches()[self.rank :: self.num_replicas]

    def resume(self, epoch: int, batches_done: int) -> None:
        """Make the next iteration over ``epoch`` start after its first ``batches_done`` batches
        (the position a checkpoint saved); an iteration over any other epoch is unaffected."""
        self._resume = (epoch, batches_done)

    def __iter__(self) -> Iterator[int]:
        self.started = True
        skip = 0
        if self._resume is not None:
            epoch, done = self._resume
            skip = done if epoch == self.epoch else 0
            self._resume = None
        for batch in self.batches()[skip:]:
            yield from batch

    def __len__(self) -> int:
        return self.num_samples
