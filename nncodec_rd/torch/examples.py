"""A tiny model to try ``nncodec-rd encode --calibration`` offline.

``nncodec-rd encode --calibration nncodec_rd.torch.examples:tiny_mlp --target-bpw 4 -o tiny.nrd``
compresses :func:`tiny_mlp`'s model with its own batches. Any function of the same shape works:
no arguments, returning ``(model, batches)``.
"""

from __future__ import annotations

import torch

TINY_MLP_SIZES = (32, 64, 16)  # inputs, hidden units, outputs


def tiny_mlp(seed: int = 0):
    """A seeded ``Linear(32, 64) - ReLU - Linear(64, 16)`` and 4 random batches of shape (16, 32).

    Returns ``(model, batches)``, the return value ``--calibration module:function`` expects.
    The global random state is left untouched.
    """
    inputs, hidden, outputs = TINY_MLP_SIZES
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.ReLU(),
                                    torch.nn.Linear(hidden, outputs))
    generator = torch.Generator().manual_seed(seed + 1)
    batches = [torch.randn(16, inputs, generator=generator) for _ in range(4)]
    return model, batches
