"""Generator states: captured, saved in a weights_only-loadable file, restored to the same draws."""
import random

import numpy as np
import torch

from launcher.runtime import rng


def draws():
    return random.random(), np.random.rand(3).tolist(), np.random.normal(), torch.rand(3).tolist()


def test_restore_repeats_the_draws_that_followed_the_capture(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    np.random.normal()                                  # leaves a cached Gaussian in NumPy's state
    torch.save(rng.capture(), tmp_path / "rng.pt")
    expected = draws()
    draws()
    rng.restore(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == expected


def test_each_rank_gets_its_own_reproducible_streams():
    def first_draws(seed: int, rank: int):
        rng.seed_rank(seed, rank)
        return draws()

    assert first_draws(3, 1) == first_draws(3, 1)
    assert first_draws(3, 0) != first_draws(3, 1) and first_draws(4, 0) != first_draws(3, 0)
