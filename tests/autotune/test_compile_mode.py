"""Tuning in a compile mode: torch.compile may recompile the tuner's calls as often as there are candidates and
combinations, and says so loudly past that; the CLI runs no search trials there unless asked."""

from __future__ import annotations

import torch._dynamo.config as dynamo

from autotune.tuner import RECOMPILES, _compiles


def test_compile_modes_raise_the_recompilation_limit_and_fail_loudly_past_it_only_while_tuning():
    before = (dynamo.recompile_limit, dynamo.fail_on_recompile_limit_hit)
    with _compiles("train+compile"):
        assert dynamo.recompile_limit == RECOMPILES and dynamo.fail_on_recompile_limit_hit
    with _compiles("train"):
        assert (dynamo.recompile_limit, dynamo.fail_on_recompile_limit_hit) == before
    assert (dynamo.recompile_limit, dynamo.fail_on_recompile_limit_hit) == before
