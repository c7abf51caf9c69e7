"""robustlab.units.parse_eps: the one place budgets (ε, α, γ) meet pixel space."""
from __future__ import annotations

import pytest

from robustlab.units import from_255, parse_eps


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
