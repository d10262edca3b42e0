"""When timing at a signature stops early: once more samples could not change the verdict there."""

from __future__ import annotations

import numpy as np

from autotune.check import Comparison
from autotune.measure import ORIGINAL, Measured, decided
from autotune.settings import TuneSettings

S = TuneSettings(device="cpu")


def samples(center: float, noise: float, n: int = 20, seed: int = 0) -> list[float]:
    return list(center + noise * np.random.default_rng(seed).standard_normal(n))


def matching(*ids: str) -> dict[str, Measured]:
    return {i: Measured(comparison=Comparison(True, 0.0)) for i in ids}


def test_a_clear_winner_and_a_clear_loser_are_decided():
    timed = {ORIGINAL: samples(10.0, 0.05), "fast": samples(5.0, 0.05, seed=1), "slow": samples(12.0, 0.05, seed=2)}
    assert decided(timed, matching("fast", "slow"), S)


def test_a_candidate_near_the_winning_line_with_a_wide_interval_is_timed_on():
    timed = {ORIGINAL: samples(10.0, 0.8), "close": samples(9.7, 0.8, seed=1)}  # about 1.03x, +-8% noise
    assert not decided(timed, matching("close"), S)


def test_a_narrow_interval_across_the_line_is_close_enough_to_stop():
    timed = {ORIGINAL: samples(10.0, 0.005), "close": samples(9.71, 0.005, seed=1)}  # 1.030x, known to 0.1%
    assert decided(timed, matching("close"), S)


def test_a_candidate_that_does_not_match_never_holds_the_timing_up():
    timed = {ORIGINAL: samples(10.0, 0.8), "wrong": samples(9.7, 0.8, seed=1)}
    wrong = {"wrong": Measured(comparison=Comparison(False, 1.0, "beyond the tolerance"))}
    assert decided(timed, wrong, S)


def test_the_sweep_stops_timing_a_size_once_it_is_clear_which_side_of_1_the_winner_is():
    from autotune.measure import settled

    base = samples(10.0, 0.05)
    assert settled(base, samples(8.0, 0.05, seed=1), 1.0, S.min_gain, S.seed)  # clearly faster
    assert settled(base, samples(12.0, 0.05, seed=1), 1.0, S.min_gain, S.seed)  # clearly slower
    assert not settled(samples(10.0, 1.0), samples(10.0, 1.0, seed=1), 1.0, S.min_gain, S.seed)  # noisy and even
