"""robustlab.units.parse_eps: the one place budgets (ε, α, γ) meet pixel space."""
from __future__ import annotations

import pytest

from robustlab.units import from_255, parse_budget, parse_eps


@pytest.mark.parametrize(("written", "pixels"), [
    ("16", 16 / 255), (16, 16 / 255), ("16/255", 16 / 255), ("1/2", 0.5), ("0.5px", 0.5),
    ("0.5", 0.5 / 255), ("0.5/255", 0.5 / 255), ("1/510", 0.5 / 255), (0, 0.0),
])
def test_every_notation_gives_the_pixel_value(written, pixels):
    assert parse_eps(written) == pytest.approx(pixels, rel=1e-12)


def test_an_integer_fraction_is_exact():
    assert parse_eps("16/255") == 16 / 255 and parse_eps("8") == from_255(8)


@pytest.mark.parametrize(("written", "message"), [
    ("abc", "--eps must be a number"), ("1/2/3", "--eps must be a number"), ("1/0", "--eps must be a number"),
    ("-3", "--eps must be finite and >= 0"), ("300", "--eps '300' is above 255"),
])
def test_bad_budgets_are_refused_naming_the_argument(written, message):
    with pytest.raises(ValueError, match=message):
        parse_eps(written, "--eps")


def test_a_budget_above_255_does_not_suggest_an_impossible_pixel_value():
    with pytest.raises(ValueError, match="1.0 in pixels") as err:
        parse_eps("256", "--eps")
    assert "256px" not in str(err.value)


@pytest.mark.parametrize(("written", "pixels"), [
    (0.03, 0.03), ("0.03", 0.03), (8, 8 / 255), ("8/255", 8 / 255), (1, 1 / 255), (0.5, 0.5), ("0.5/255", 0.5 / 255),
])
def test_a_config_or_flag_reads_a_small_plain_budget_as_pixels(written, pixels):
    """``eps: 0.03`` or ``--step-size 0.02`` meant pixels, not 0.03/255 (a budget 255 times smaller than meant)."""
    assert parse_budget(written, "eps") == pytest.approx(pixels, rel=1e-12)
