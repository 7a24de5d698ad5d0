"""The one place that seeds the global random number generators."""

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator and torch (CPU and every CUDA device).

    Data and sampling code should still take explicit `torch.Generator`s; this covers what
    cannot, such as parameter initialisation and dropout.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy only accepts seeds below 2**32
    torch.manual_seed(seed)
