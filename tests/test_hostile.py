"""The hostile-input script (tests/hostile.py) in the suite: every case handled, at least 40 of them."""

import pytest

from tests.hostile import cases, run_all

pytestmark = pytest.mark.slow  # about 60 CLI processes; no model loads


def test_every_hostile_input_is_handled(capsys):
    all_cases = cases()
    assert len(all_cases) >= 40
    handled, total, failures = run_all(all_cases)
    assert failures == [], "\n".join(failures)
    assert handled == total >= 40
