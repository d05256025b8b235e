"""The webui parameters and their infotext codec (skip_tuning.infotext): pure, no webui."""

from __future__ import annotations

import pytest

from skip_tuning import DEFAULT_RHO_BOTTOM, DEFAULT_RHO_TOP, SkipTuningError
from skip_tuning.infotext import (
    HIRES_PASS_CHOICES,
    INFOTEXT_KEYS,
    KEY_ENABLED,
    KEY_RHO_BOTTOM,
    WebuiParams,
    decode_infotext,
    encode_infotext,
    format_number,
    make_params,
    normalize_passes,
    parse_bool,
    paste_values,
)


def test_defaults_come_from_the_core_constants():
    params = WebuiParams()
    assert (params.enabled, params.rho_bottom, params.rho_top) == (False, DEFAULT_RHO_BOTTOM, DEFAULT_RHO_TOP)
    assert (params.start, params.end, params.hires_passes) == (0.0, 100.0, "Both passes")
    assert (DEFAULT_RHO_BOTTOM, DEFAULT_RHO_TOP) == (1.0, 1.0)


def test_encode_only_when_enabled_and_only_non_defaults():
    assert encode_infotext(make_params(False, 0.5)) == {}
    assert encode_infotext(make_params(True)) == {
        "Skip Tuning": "True", "Skip Tuning rho_bottom": "1", "Skip Tuning rho_top": "1"}
    full = encode_infotext(make_params(True, 0.85, 0.95, 12.5, 80, "second"))
    assert full["Skip Tuning start"] == "12.5" and full["Skip Tuning end"] == "80"
    assert full["Skip Tuning passes"] == "Hires pass only"
    assert set(full) == set(INFOTEXT_KEYS)


@pytest.mark.parametrize("params", [
    make_params(True), make_params(True, 0.0, 2.0, 0, 0, "first"), make_params(True, 0.7000000000000001, 1.23456789),
    make_params(True, 1.2, 0.8, 33.3, 66.6, "Hires pass only"), make_params(False),
])
def test_round_trip(params):
    assert decode_infotext(encode_infotext(params)) == params


def test_text_without_our_keys_decodes_to_off_and_pastes_off():
    plain = {"Steps": "20", "Sampler": "Euler a"}
    assert decode_infotext(plain) == WebuiParams(enabled=False)
    assert paste_values(plain) == {KEY_ENABLED: "False"}


def test_paste_fills_every_key_with_defaults():
    values = paste_values({KEY_RHO_BOTTOM: "0.7"})  # even without "Skip Tuning: True"
    assert values == {"Skip Tuning": "True", "Skip Tuning rho_bottom": "0.7", "Skip Tuning rho_top": "1",
                      "Skip Tuning start": "0", "Skip Tuning end": "100", "Skip Tuning passes": "Both passes"}
    assert paste_values({KEY_ENABLED: "False", KEY_RHO_BOTTOM: "0.7"})[KEY_ENABLED] == "False"


def test_decoding_is_lenient():
    params = decode_infotext({KEY_ENABLED: "True", KEY_RHO_BOTTOM: "lots", "Skip Tuning rho_top": "9",
                              "Skip Tuning start": "70%", "Skip Tuning end": "20", "Skip Tuning passes": "?"})
    assert params == WebuiParams(enabled=True)  # start > end falls back to the whole run


def test_make_params_validates():
    for bad in (dict(rho_bottom=2.5), dict(rho_top=float("nan")), dict(start=-1), dict(end=101),
                dict(start=60, end=40), dict(start=True), dict(hires_passes="third"), dict(enabled="maybe"),
                dict(rho_bottom=None)):
        with pytest.raises(SkipTuningError):
            make_params(**bad)
    assert make_params("on", "0.9", "1", "10", "90", "hires").rho_bottom == 0.9


def test_passes_and_bools():
    assert [normalize_passes(v) for v in ("both", "First pass", "second_pass", "HIRES")] == [
        HIRES_PASS_CHOICES[0], HIRES_PASS_CHOICES[1], HIRES_PASS_CHOICES[2], HIRES_PASS_CHOICES[2]]
    assert [parse_bool(v) for v in (True, "On", "yes", 1, "False", "off", 0)] == [True] * 4 + [False] * 3
    params = make_params(True, hires_passes="first")
    assert params.applies_to_pass(False) and not params.applies_to_pass(True)
    params = make_params(True, hires_passes="hires")
    assert params.applies_to_pass(True) and not params.applies_to_pass(False)
    assert make_params(True).applies_to_pass(True) and make_params(True).applies_to_pass(False)


def test_format_number_is_short_and_exact():
    assert [format_number(v) for v in (0.8, 1.0, 0.0, 0.85, 100.0, 12.5)] == ["0.8", "1", "0", "0.85", "100", "12.5"]
    for value in (0.7000000000000001, 1.23456789, 1e-7):
        assert float(format_number(value)) == value
