"""The end-to-end search's budget: --trials bounds it, --patience ends it once sampled trials stop improving.

The trials here are scored by a table instead of timings, so which trial improves is known in advance."""

from __future__ import annotations

import pytest

from autotune import TuneError, autotune
from autotune.measure import Timing
from autotune.search import improves, run
from autotune.tuner import TuneSettings

SPACE = {"norm": [None, "impl:a", "impl:b", "impl:c"], "rope": [None, "impl:x", "impl:y", "impl:z"],
         "mlp": [None, "impl:p", "impl:q", "impl:r"]}
FIRST = {"norm": "impl:a", "rope": None, "mlp": None}
POOLS = {"pool:one": {"norm": "impl:b", "rope": "impl:x", "mlp": "impl:p"}}


def search(scores, **settings):
    """Run the search with trial k scored scores(k, choices); return what it found and the choices evaluated."""
    seen = []

    def evaluate(choices):
        seen.append(dict(choices))
        relative = scores(len(seen) - 1, choices)
        return Timing((relative,) * 4), 100.0, relative

    s = TuneSettings(device="cpu", seed=0, **settings)
    return run(evaluate, SPACE, FIRST, s, lambda *a: None, POOLS), seen


def test_without_patience_every_trial_of_the_budget_runs():
    found, seen = search(lambda k, c: 1.0, trials=12)
    assert len(seen) == 12 and len(found.trials) == 12 and not found.stopped_early


def test_patience_stops_once_that_many_sampled_trials_in_a_row_found_nothing_better():
    # The seeded trials (first, the pool) score 0.9 and 0.8; no sampled trial does better.
    found, seen = search(lambda k, c: [0.9, 0.8][k] if k < 2 else 1.0, trials=30, patience=3)
    assert found.stopped_early
    assert len(seen) == 2 + 3  # the seeded trials always run, then three stale ones
    assert [t["label"] for t in found.trials[:2]] == ["first", "pool:one"]
    assert found.best == POOLS["pool:one"]


def test_an_improving_trial_resets_the_count():
    # Sampled trials 2-3 are stale, trial 4 improves on everything before it, then 5-7 are stale: stop after 8.
    found, seen = search(lambda k, c: 0.5 if k == 4 else 1.0, trials=30, patience=3)
    assert found.stopped_early and len(seen) == 8
    assert found.best == seen[4]


def test_patience_never_runs_more_than_the_budget():
    found, seen = search(lambda k, c: 1.0 / (k + 1), trials=6, patience=2)  # every trial improves
    assert len(seen) == 6 and not found.stopped_early


def test_with_two_objectives_a_trial_improves_when_it_joins_the_pareto_front():
    earlier = [[1.0, 500.0], [0.8, 900.0]]
    assert improves([0.9, 400.0], earlier)      # lower memory than both: on the front
    assert improves([0.7, 1000.0], earlier)     # fastest: on the front
    assert not improves([0.9, 950.0], earlier)  # dominated by [0.8, 900]
    assert not improves([1.0, 500.0], earlier)  # a tie with an earlier trial is no improvement
    assert improves([0.5], []) and improves([0.5], [[0.6]]) and not improves([0.6], [[0.6]])


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "3"])
def test_a_bad_patience_is_refused_before_any_work(value):
    import torch.nn as nn

    with pytest.raises(TuneError, match="patience"):
        autotune(nn.Linear(2, 2), (), TuneSettings(device="cpu", patience=value))


@pytest.mark.parametrize("value", [0, -5.0])
def test_a_bad_time_limit_is_refused_before_any_work(value):
    import torch.nn as nn

    with pytest.raises(TuneError, match="time limit"):
        autotune(nn.Linear(2, 2), (), TuneSettings(device="cpu", time_limit_s=value))
