"""Seeding the global random number generators of Python, NumPy and torch.

When an experiment starts, :func:`seed_everything` seeds all three with its ``random_seed``
(torch's CPU generator and every CUDA device's), the same on every rank. The ranks of a
distributed run therefore draw the same numbers until the model is wrapped: the model's
initialisation, a ``random_split`` of the data and anything else drawn before
``ctx.ddp()`` agree across ranks. ``ctx.ddp()`` then calls :func:`diverge_ranks`, which
re-seeds each rank from a draw of the (shared) stream and the rank, so dropout masks and
augmentations differ between ranks, as independent samples should, and still repeat
exactly in a run with the same seed.
"""
import random

import numpy
import torch

_UINT64 = 2**64


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global ``RandomState`` and torch with ``seed``.

    torch's seed reaches the CPU generator and every CUDA device's, also when CUDA is
    initialised later. With a seed in 0..2**32-1 the effect equals ``random.seed(seed)``,
    ``numpy.random.seed(seed)`` and ``torch.manual_seed(seed)`` by hand.
    """
    seed = int(seed)
    random.seed(seed)
    value = seed % _UINT64
    # NumPy's legacy seeding takes 32 bits, or an array of 32-bit words for more.
    numpy.random.seed(value if value < 2**32 else [value & 0xFFFFFFFF, value >> 32])
    torch.manual_seed(value)


def diverge_ranks(rank: int) -> None:
    """Re-seed this rank's global generators from a draw of torch's stream and ``rank``.

    Every rank draws the same base from the same stream; NumPy's ``SeedSequence`` spreads
    (base, rank) into unrelated seeds, so rank 1 is not rank 0 shifted by one.
    """
    base = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    sequence = numpy.random.SeedSequence(base, spawn_key=(int(rank),))
    seed_everything(int(sequence.generate_state(1, dtype=numpy.uint64)[0]))
