import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autofit.budget import Budget, Clock, Plan, parse_params, process_start_time
from autofit.errors import UsageError
from autofit.presets import preset


@pytest.mark.parametrize("text,expected", [
    ("2M", 2_000_000), ("1.5M", 1_500_000), ("500k", 500_000), ("250000", 250_000),
    (" 2m ", 2_000_000), ("0.25M", 250_000), ("1G", 1_000_000_000), (1000, 1000),
])
def test_parse_params_accepts_counts(text, expected):
    assert parse_params(text) == expected


@pytest.mark.parametrize("text", ["0", "2X", "1e99", "-1", "", "abc", "nan", "M", "2MM", "1e6",
                                  "20G", True])
def test_parse_params_rejects_with_option_name(text):
    with pytest.raises(UsageError, match="--max-params"):
        parse_params(text)


@pytest.mark.parametrize("minutes", [0, -1, "nan", "inf", "abc", 1e9, None, "", 0.1])
def test_budget_rejects_bad_minutes(minutes):
    with pytest.raises(UsageError, match="--minutes"):
        Budget(minutes=minutes)


def test_budget_accepts_float_minutes_and_tolerance():
    budget = Budget(minutes="1.5", max_params="500k")
    assert budget.seconds == 90 and budget.max_params == 500_000
    assert budget.tolerance_s == 5.0
    assert Budget(minutes=10).tolerance_s == pytest.approx(18.0)


def test_default_preset_loads_and_flags_override():
    path = preset("budgets", "default")
    assert Budget.from_yaml(path) == Budget(minutes=10, max_params="2M", search_share="auto")
    assert Budget.from_yaml(path, minutes="2", max_params=None).minutes == 2


def test_bad_preset_names_the_file(tmp_path: Path):
    bad = tmp_path / "b.yaml"
    bad.write_text("minutes: 1\nsurprise: 3\n")
    with pytest.raises(UsageError, match=str(bad)):
        Budget.from_yaml(bad)
    with pytest.raises(UsageError, match="no budgets preset named 'nope'"):
        preset("budgets", "nope")


def test_clock_phases_tile_the_run():
    clock = Clock(60, started_at=time.time() - 1.0)
    clock.start_phase("search")
    time.sleep(0.05)
    clock.start_phase("refit")
    phases = clock.phases()
    assert list(phases) == ["setup", "search", "refit"]
    assert phases["setup"] >= 1.0 and phases["search"] >= 0.05
    assert sum(phases.values()) == pytest.approx(clock.elapsed(), abs=0.01)
    assert clock.left() == pytest.approx(60 - clock.elapsed(), abs=0.01)


def test_plan_splits_what_is_left_and_refuses_too_little():
    budget = Budget(minutes=1, search_share=0.6)
    clock = Clock(budget.seconds)
    plan = Plan.make(budget, clock, n_test=100)
    assert plan.search_s + plan.refit_s + plan.final_reserve_s == pytest.approx(60, abs=0.1)
    assert plan.search_s == pytest.approx(budget.search_share * (plan.search_s + plan.refit_s))
    assert list(plan.milestones) == sorted(plan.milestones) and plan.milestones[-1] < plan.trial_s
    assert math.isclose(plan.search_deadline, time.time() + plan.search_s, abs_tol=0.1)
    late = Clock(budget.seconds, started_at=time.time() - 58)
    with pytest.raises(UsageError, match="too little"):
        Plan.make(budget, late, n_test=100)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=12), st.integers(), st.floats(allow_nan=True)))
def test_any_option_text_is_a_budget_or_one_clear_error(value):
    """Fuzzed --minutes / --max-params: a valid budget or a UsageError, never anything else."""
    for field in ("minutes", "max_params"):
        try:
            budget = Budget(**{field: value})
        except UsageError as err:
            assert f"--{field.replace('_', '-')}" in str(err) and "\n" not in str(err)
        else:
            assert budget.seconds >= 15 and 1 <= budget.max_params <= 10_000_000_000


def test_process_start_time_is_when_the_process_began_to_the_tick():
    """Start-up counts against the budget, and a resume's dead time is wall minus budget: both
    need the start to the clock tick, not to the whole second of the boot time."""
    before = time.time()
    child = subprocess.run([sys.executable, "-c", "import time; t = time.time(); "
                            "from autofit.budget import process_start_time as p; print(p(), t)"],
                           capture_output=True, text=True, check=True)
    started, first_line = map(float, child.stdout.split())
    assert before - 0.05 <= started <= first_line
    assert abs(process_start_time() - process_start_time()) < 1e-3
