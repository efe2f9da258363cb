"""Length-grouped batches that shard across DDP ranks: less padding, and ranks that wait little."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler


class LengthGroupedSampler(DistributedSampler):
    """Yields indices so that consecutive ``batch_size`` chunks have similar lengths, sharded by rank.

    Indices are shuffled (seed + epoch), cut into mega-batches of ``mega_batch_mult`` batches
    (rounded up to a multiple of ``num_replicas``), sorted by length inside each and cut into
    batches; batch ``i`` goes to rank ``i % num_replicas``. So:

    * the ``num_replicas`` batches of one optimizer step are neighbours in a sorted mega-batch:
      similar lengths, so ranks wait little for each other;
    * every rank yields the same number of batches (the last step is filled by repeating indices);
    * the batch order does not depend on ``num_replicas``: N processes with batch B see at each step
      the batches one process with batch B and ``accumulate_grad_batches=N`` sees (up to the
      padding of the epoch's last step), so changing the GPU count keeps the data, and DDP and
      FSDP are tested against a single process that way.

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
    ):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.mega = batch_size * (-(-max(1, mega_batch_mult) // num_replicas) * num_replicas)
        step = batch_size * num_replicas
        self.num_steps = max(1, -(-len(self.lengths) // step))
        self.num_samples = self.num_steps * batch_size
        self.total_size = self.num_samples * num_replicas
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
