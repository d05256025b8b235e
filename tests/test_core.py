"""Unit tests of the host-free core: the rho schedule, per-skip lists and validation."""

import math

import pytest

from skip_tuning import (
    RHO_MAX,
    RHO_MIN,
    SkipTuningError,
    parse_rho_list,
    resolve_rhos,
    rho_schedule,
    validate_percent_window,
    validate_rho,
)


def formula(n, bottom, top, i):
    return bottom + (top - bottom) * i / (n - 1)


@pytest.mark.parametrize("n", [12, 9, 6])
@pytest.mark.parametrize("bottom, top", [(0.8, 1.0), (0.5, 1.2), (1.3, 0.7), (0.0, 2.0), (1.0, 1.0)])
def test_schedule_follows_formula(n, bottom, top):
    rhos = rho_schedule(n, bottom, top)
    assert len(rhos) == n
    assert rhos[0] == bottom  # deepest skip: exactly rho_bottom
    assert rhos[-1] == top  # highest-resolution skip: exactly rho_top
    for i, rho in enumerate(rhos):
        assert math.isclose(rho, formula(n, bottom, top, i), rel_tol=0, abs_tol=1e-15), (i, rho)
    assert all(isinstance(rho, float) for rho in rhos)


def test_schedule_exact_values_sd1_sdxl_koala():
    assert rho_schedule(12, 0.8, 1.0) == pytest.approx(
        [0.8, 0.8181818181818182, 0.8363636363636364, 0.8545454545454545, 0.8727272727272728,
         0.8909090909090909, 0.9090909090909091, 0.9272727272727272, 0.9454545454545454,
         0.9636363636363636, 0.9818181818181818, 1.0], abs=1e-15)
    assert rho_schedule(9, 0.6, 1.0) == pytest.approx([0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0], abs=1e-15)
    assert rho_schedule(6, 0.5, 1.0) == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9, 1.0], abs=1e-15)


def test_schedule_top_is_exact_where_the_sum_is_not():
    # 0.0 + (0.03 - 0.0) * 11 / 11 is 0.029999999999999995 in floating point; the top skip must get 0.03.
    assert 0.0 + (0.03 - 0.0) * 11 / 11 != 0.03
    assert rho_schedule(12, 0.0, 0.03)[-1] == 0.03


def test_schedule_one_skip_uses_rho_bottom():
    assert rho_schedule(1, 0.7, 1.3) == (0.7,)


def test_rho_one_everywhere_is_identity():
    for n in (12, 9, 6, 1):
        assert rho_schedule(n, 1.0, 1.0) == (1.0,) * n


@pytest.mark.parametrize("n", [0, -3, 2.0, "12", None, True])
def test_schedule_rejects_bad_skip_counts(n):
    with pytest.raises(SkipTuningError, match="at least one long skip"):
        rho_schedule(n, 0.8, 1.0)


def test_resolve_interpolates_without_list():
    assert resolve_rhos(9, 0.6, 1.0) == rho_schedule(9, 0.6, 1.0)
    assert resolve_rhos(9, 0.6, 1.0, "") == rho_schedule(9, 0.6, 1.0)
    assert resolve_rhos(9, 0.6, 1.0, "  ") == rho_schedule(9, 0.6, 1.0)
    assert resolve_rhos(9, 0.6, 1.0, ()) == rho_schedule(9, 0.6, 1.0)


def test_resolve_per_skip_override():
    text = "0.5, 0.6,0.7 ,0.8,0.9, 1.0"
    assert resolve_rhos(6, 0.8, 1.0, text) == (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert resolve_rhos(6, 0.8, 1.0, "[0.5, 0.6, 0.7, 0.8, 0.9, 1]") == (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert resolve_rhos(6, 0.8, 1.0, "0.5;0.6;0.7;0.8;0.9;1") == (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert resolve_rhos(3, 0.8, 1.0, [0.9, 1, 1.1]) == (0.9, 1.0, 1.1)
    assert resolve_rhos(1, 0.8, 1.0, "1.2") == (1.2,)


@pytest.mark.parametrize("n, text", [(12, "0.8, 0.9, 1.0"), (9, ",".join(["1"] * 12)), (6, "1,1,1,1,1,1,1")])
def test_resolve_wrong_count_names_the_models_skip_count(n, text):
    given = len(text.split(","))
    with pytest.raises(SkipTuningError) as info:
        resolve_rhos(n, 0.8, 1.0, text)
    message = str(info.value)
    assert f"{given} values" in message
    assert f"this model has {n} long skips" in message
    assert f"give {n} values" in message


@pytest.mark.parametrize("text, fragment", [
    ("0.8,,1", "empty entry"),
    ("0.8, 1,", "empty entry"),
    ("0.8, abc", "rho_per_skip entry 2 must be a number, got 'abc'"),
    ("0.8, nan", "rho_per_skip entry 2 must be finite"),
    ("inf, 1", "rho_per_skip entry 1 must be finite"),
    ("0.8, 2.5", "rho_per_skip entry 2 must be between 0.0 and 2.0, got 2.5"),
    ("-0.1", "rho_per_skip entry 1 must be between"),
])
def test_parse_rho_list_errors(text, fragment):
    with pytest.raises(SkipTuningError, match=None) as info:
        parse_rho_list(text)
    assert fragment in str(info.value)


def test_parse_rho_list_rejects_non_strings():
    with pytest.raises(SkipTuningError, match="comma-separated"):
        parse_rho_list(0.8)


def test_resolve_validates_rho_bottom_and_top_even_with_a_list():
    with pytest.raises(SkipTuningError, match="rho_bottom must be finite"):
        resolve_rhos(1, float("nan"), 1.0, "1.0")
    with pytest.raises(SkipTuningError, match="rho_top must be between"):
        resolve_rhos(1, 1.0, 3.0, "1.0")


@pytest.mark.parametrize("value", [0.0, 0.5, 1, 2.0, "0.75"])
def test_validate_rho_accepts(value):
    assert validate_rho(value) == float(value)


@pytest.mark.parametrize("value, fragment", [
    (float("nan"), "must be finite"),
    (float("inf"), "must be finite"),
    (float("-inf"), "must be finite"),
    (-0.01, "between 0.0 and 2.0"),
    (2.01, "between 0.0 and 2.0"),
    (None, "must be a number"),
    ("abc", "must be a number"),
    (True, "must be a number"),
    ([0.8], "must be a number"),
])
def test_validate_rho_rejects(value, fragment):
    with pytest.raises(SkipTuningError) as info:
        validate_rho(value, "rho_bottom")
    assert str(info.value).startswith("rho_bottom ")
    assert fragment in str(info.value)


def test_range_constants():
    assert (RHO_MIN, RHO_MAX) == (0.0, 2.0)
    assert issubclass(SkipTuningError, ValueError)


def test_validate_percent_window():
    assert validate_percent_window(0, 1) == (0.0, 1.0)
    assert validate_percent_window(0.25, 0.25) == (0.25, 0.25)
    assert validate_percent_window("0.1", 0.9) == (0.1, 0.9)


@pytest.mark.parametrize("start, end, fragment", [
    (0.6, 0.4, "start_percent (0.6) must not be after end_percent (0.4)"),
    (-0.1, 0.5, "start_percent must be between 0 and 1"),
    (0.0, 1.5, "end_percent must be between 0 and 1"),
    (float("nan"), 1.0, "start_percent must be between 0 and 1"),
    (0.0, float("inf"), "end_percent must be between 0 and 1"),
    ("x", 1.0, "start_percent must be a number"),
    (0.0, None, "end_percent must be a number"),
    (False, 1.0, "start_percent must be a number"),
])
def test_validate_percent_window_rejects(start, end, fragment):
    with pytest.raises(SkipTuningError) as info:
        validate_percent_window(start, end)
    assert fragment in str(info.value)
