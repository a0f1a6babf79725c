"""Fuzzing every content type's input_fn: the only exception that may escape is InferenceError with a 4xx.

A bounded number of examples per type keeps this fast; benchmarks/bench_fuzz.py runs 100,000+ of the same.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.fuzz import BODIES, check, content_types

EXAMPLES = 200
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("content_type", list(BODIES))
def test_input_fn_refuses_cleanly_or_returns_pixels(content_type):
    outcomes: list[str] = []

    @SETTINGS
    @given(BODIES[content_type])
    def run(body: bytes) -> None:
        outcomes.append(check(body, content_type))

    run()
    assert "ok" in outcomes and any(o != "ok" for o in outcomes), set(outcomes)  # both paths were exercised


@SETTINGS
@given(st.one_of(*BODIES.values()), content_types)
def test_any_body_with_any_content_type(body, content_type):
    check(body, content_type)
