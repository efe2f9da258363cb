"""Length-grouped batches that shard across DDP ranks: less padding, and ranks that wait little."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler


class LengthGroupedSampler(DistributedSampler):
    """Yields indices so that consecutive ``batch_size`` chunks have similar lengths, sharded by rank.

    Indices are shuffled (seed + epoch), cut into mega-batches, sorted by length inside each, and cut
    into batches; ``num_replicas`` neighbouring batches form one step, whose batches go one to each
    rank (so ranks wait little for each other), and steps are shuffled. It subclasses
    ``DistributedSampler`` so Lightning leaves it in place under DDP; ``set_epoch`` reshuffles.
    Every rank yields the same number of batches (the last step is filled by repeating indices).
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
        self.mega = batch_size * num_replicas * mega_batch_mult
        step = batch_size * num_replicas
        self.num_steps = max(1, -(-len(self.lengths) // step))
        self.num_samples = self.num_steps * batch_size
        self.total_size = self.num_samples * num_replicas

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch."""
        n = len(self.lengths)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        pad = self.total_size - n  # repeat indices so every rank gets the same number of batches
        order += (order * (pad // max(n, 1) + 1))[:pad]
        steps: list[list[list[int]]] = []
        for m in range(0, len(order), self.mega):
            chunk = sorted(order[m : m + self.mega], key=lambda i: -self.lengths[i])
            batches = [chunk[b : b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
            steps += [batches[s : s + self.num_replicas] for s in range(0, len(batches), self.num_replicas)]
        if self.shuffle:
            perm = torch.randperm(len(steps), generator=g).tolist()
            steps = [steps[i] for i in perm]
        return [step[self.rank] for step in steps]

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch

    def __len__(self) -> int:
        return self.num_samples
