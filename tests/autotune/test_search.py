"""The end-to-end search: the seeds, then the walk one target at a time from the pick, then sampled trials;
--trials bounds it, --patience ends it once sampled trials stop improving; with both objectives, the pick trades
a time difference below min_gain for less memory.

The trials here are scored by a table instead of timings, so which trial improves is known in advance."""

from __future__ import annotations

import pytest

from autotune import TuneError, autotune
from autotune.measure import Timing
from autotune.search import best_trial as pick, improves, neighbours, run
from autotune.settings import TuneSettings

SPACE = {"norm": [None, "impl:a", "impl:b", "impl:c"], "rope": [None, "impl:x", "impl:y", "impl:z"],
         "mlp": [None, "impl:p", "impl:q", "impl:r"]}
FIRST = {"norm": "impl:a", "rope": None, "mlp": None}
POOLS = {"pool:one": {"norm": "impl:b", "rope": "impl:x", "mlp": "impl:p"}}


def search(scores, intervals=None, **settings):
    """Run the search with trial k scored scores(k, choices); return what it found and the choices evaluated."""
    seen = []

    def evaluate(choices):
        seen.append(dict(choices))
        relative = scores(len(seen) - 1, choices)
        return Timing((relative,) * 4), 100.0, relative

    s = TuneSettings(device="cpu", seed=0, **settings)
    return run(evaluate, SPACE, FIRST, s, lambda *a: None, POOLS, intervals), seen


def test_without_patience_every_trial_of_the_budget_runs():
    found, seen = search(lambda k, c: 1.0, trials=12, patience=None)
    assert len(seen) == 12 and len(found.trials) == 12 and not found.stopped_early


def labels(found):
    return [t["label"] for t in found.trials]


def test_after_the_seeds_the_search_walks_one_target_at_a_time_from_the_best_then_samples():
    # The seeded trials (first, the pool) score 0.9 and 0.8; nothing else does better.
    found, seen = search(lambda k, c: [0.9, 0.8][k] if k < 2 else 1.0, trials=30, patience=3)
    moves = neighbours(POOLS["pool:one"], SPACE)
    assert len(moves) == 9  # three targets, three other options each
    assert labels(found) == ["first", "pool:one"] + ["walk"] * 9 + [None] * 3
    assert seen[2:11] == moves  # every move from the pick, each changing one target
    assert found.stopped_early and found.best == POOLS["pool:one"]


def test_the_walk_skips_moves_to_options_measured_significantly_slower_at_their_target():
    # Per target: impl:c and impl:z were significantly slower than the pool's picks; impl:q overlaps impl:p.
    intervals = {"norm": {None: (1.0, 1.0), "impl:a": (1.2, 1.4), "impl:b": (1.5, 1.7), "impl:c": (0.6, 0.8)},
                 "rope": {None: (1.0, 1.0), "impl:x": (2.0, 2.2), "impl:y": (1.9, 2.1), "impl:z": (1.1, 1.3)},
                 "mlp": {None: (1.0, 1.0), "impl:p": (1.1, 1.3), "impl:q": (1.0, 1.2)}}  # impl:r: not measured
    found, seen = search(lambda k, c: [0.9, 0.8][k] if k < 2 else 1.0, intervals, trials=30, patience=3)
    walked = [c for c, label in zip(seen, labels(found)) if label == "walk"]
    pool = POOLS["pool:one"]  # the pick walked from: norm impl:b, rope impl:x, mlp impl:p
    # tried: intervals that overlap the replaced option's (rope impl:y, mlp impl:q) or none known (mlp impl:r)
    assert walked == [{**pool, "rope": "impl:y"}, {**pool, "mlp": "impl:q"}, {**pool, "mlp": "impl:r"}]
    # skipped: every norm move (the original, impl:a, impl:c: all wholly below impl:b's 1.5-1.7), rope's original
    # and impl:z (below impl:x's 2.0-2.2), mlp's original (1.0, below impl:p's 1.1-1.3)
    # memory objectives keep every move: a slower option may be the lighter one
    found, seen = search(lambda k, c: [0.9, 0.8][k] if k < 2 else 1.0, intervals, trials=30, patience=3,
                         objective="memory")
    assert labels(found).count("walk") == 9


def test_the_walk_finds_the_best_combination_when_the_choices_add_up():
    # Each target's options cost a known amount and the costs add up, as kernel times nearly do in a model.
    cost = {"norm": {None: 0.3, "impl:a": 0.25, "impl:b": 0.2, "impl:c": 0.1},
            "rope": {None: 0.3, "impl:x": 0.3, "impl:y": 0.15, "impl:z": 0.25},
            "mlp": {None: 0.4, "impl:p": 0.45, "impl:q": 0.5, "impl:r": 0.3}}
    found, seen = search(lambda k, c: sum(cost[key][c[key]] for key in c), trials=40, patience=2)
    best = {"norm": "impl:c", "rope": "impl:y", "mlp": "impl:r"}
    assert found.best == best
    first_hit = seen.index(best)
    assert found.trials[first_hit]["label"] == "walk"  # reached by the walk's moves, not by luck of the sampler
    assert found.stopped_early and len(seen) < 40  # then the walk ran out of better moves and patience ended it


def test_patience_counts_sampled_trials_and_an_improving_trial_resets_the_count():
    # Trial 12 (the second sampled trial: 2 seeds and 9 moves come first) improves on everything before it.
    found, seen = search(lambda k, c: 0.5 if k == 12 else 1.0, trials=60, patience=3)
    ls = labels(found)
    assert ls[:11] == ["first", "pool:one"] + ["walk"] * 9 and ls[11:13] == [None, None]
    assert found.best == seen[12]
    after = ls[13:]
    walk = after.count("walk")
    assert walk > 0 and after == ["walk"] * walk + [None] * 3  # a walk from the new pick, then three stale samples
    assert found.stopped_early  # one stale sample before trial 12 did not carry over: 3 after it, not 2


def test_with_both_objectives_the_pick_trades_a_time_difference_below_min_gain_for_memory():
    values = {0: [1.0, 500.0], 1: [0.80, 900.0], 2: [0.81, 600.0], 3: [0.95, 400.0], 4: [0.81, 650.0]}
    assert pick(values, 0.03) == 2   # within 3% of the fastest (0.80), and 300 MB less
    assert pick(values, 0.0) == 1    # no slack: the fastest
    assert pick(values, 0.25) == 3   # 0.95 is within 25% of 0.80; 0.4 GB beats 0.5 GB at 1.0 (dominated anyway)
    assert pick({0: [0.9], 1: [0.7], 2: [0.7]}, 0.03) == 1  # one objective: the lowest score, the earliest on ties
    assert pick({}, 0.03) is None


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


def test_with_both_objectives_a_combination_beats_another_by_speed_at_like_memory_or_by_memory_at_like_speed():
    from autotune.decide import beats as _beats

    def t(ms):  # a timing with a little noise around ms
        return Timing(tuple(ms * (1 + 0.002 * (i % 5 - 2)) for i in range(20)))

    old = (t(100.0), 10_000.0)
    assert _beats((t(90.0), 10_100.0), old, "both", 0, 0.03)      # faster, memory within 3%
    assert not _beats((t(90.0), 11_000.0), old, "both", 0, 0.03)  # faster, but 10% more memory
    assert _beats((t(100.0), 8_000.0), old, "both", 0, 0.03)      # as fast, 20% less memory
    assert not _beats((t(105.0), 8_000.0), old, "both", 0, 0.03)  # less memory, but significantly slower
    assert not _beats((t(100.0), 9_900.0), old, "both", 0, 0.03)  # as fast, 1% less memory: no difference
    assert _beats((t(90.0), 11_000.0), old, "latency", 0, 0.03)   # one objective: speed alone
    assert _beats((t(105.0), 9_900.0), old, "memory", 0, 0.03)


def test_the_search_trials_timer_takes_a_third_of_the_samples_of_the_final_comparison():
    from autotune.measure import Timer
    from autotune.settings import TimerSettings

    full = Timer("cpu", TimerSettings(batch=10, min_samples=20, max_seconds=2.0))
    quick = full.quick()
    assert (quick.settings.batch, quick.settings.min_samples, quick.settings.max_seconds) == (3, 6, 1.0)
    assert full.settings.batch == 10  # the full timer is left as it was
    timing = quick.time(lambda: None)
    assert len(timing.samples) >= 6


def test_an_exhaustive_search_times_every_combination_once_and_picks_the_best():
    best = {"norm": "impl:c", "rope": "impl:y", "mlp": None}
    found, seen = search(lambda k, c: 0.5 if c == best else 1.0, trials=3, patience=1, exhaustive=True)
    assert len(seen) == 64 and len({tuple(c.items()) for c in seen}) == 64  # 4 x 4 x 4, none twice
    assert labels(found)[:2] == ["first", "pool:one"] and found.best == best and not found.stopped_early


def test_over_the_limit_an_exhaustive_search_falls_back_to_the_usual_one(caplog):
    wide = {**SPACE, "loss": [None, "impl:l"]}  # 128 combinations
    s = TuneSettings(device="cpu", seed=0, trials=5, patience=None, exhaustive=True)
    seen = []
    run(lambda c: (seen.append(c), (Timing((1.0,) * 4), 100.0, 1.0))[1], wide, FIRST, s, lambda *a: None)
    assert len(seen) == 5 and "128 combinations, more than 64" in caplog.text
