"""How a report writes numbers and names: Wilson intervals against their
formula's known values, budgets in 0–255 and pixels, labels and recipes."""
from __future__ import annotations

import math

import pytest

from robustlab.report.blocks import cell, table
from robustlab.report.format import budget, humanize, network_text, pct, recipe_text, wilson


@pytest.mark.parametrize(("p", "n", "lo", "hi"), [
    (0.5, 100, 0.4038, 0.5962),   # the textbook case
    (0.0, 10, 0.0, 0.2775),       # no success still has an upper bound
    (1.0, 10, 0.7225, 1.0),
    (0.802, 500, 0.7648, 0.8345),
])
def test_wilson_interval(p, n, lo, hi):
    got = wilson(p, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)
    assert got[0] <= p <= got[1]


def test_wilson_narrows_with_n_and_is_symmetric_about_a_half():
    widths = [(lambda lo_hi: lo_hi[1] - lo_hi[0])(wilson(0.3, n)) for n in (10, 100, 1000, 10000)]
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.02
    lo, hi = wilson(0.5, 37)
    assert math.isclose(0.5 - lo, hi - 0.5)


def test_one_form_for_a_percentage_and_no_invented_n():
    assert pct(0.802, 500) == "80.2% [76.5, 83.5] n=500"
    assert pct(0.802, None) == "80.2% (n not recorded)"
    c = cell(0.802, 500)
    assert (c.text, c.note, c.title) == ("80.2%", "[76.5, 83.5] n=500", "0.8020")
    assert cell(0.802, None).text == "80.2%†" and cell(0.802, None).note == ""
    assert cell(12, 500).text == "12" and cell("none").cls == "text"
    # n recorded as 0 (a transfer no image of which every model classifies) is not a measured 0 %
    assert pct(0.0, 0) == "— (n=0: counted no image)"
    assert cell(0.0, 0).text == "—" and cell(0.0, 0).note == "n=0" and "counted no image" in cell(0.0, 0).title
    assert "n not recorded" in table([{"a": 0.5}]).footnote


def test_budgets_in_thesis_units_and_pixels():
    assert budget(8 / 255) == "ε = 8/255 (0.0314) L∞"
    assert budget(16 / 255, symbol="α") == "α = 16/255 (0.0627) L∞"
    assert budget(0.5, "l2") == "ε = 0.5 L2 (pixels)"
    assert budget(None) == "ε not recorded"


@pytest.mark.parametrize(("recipe", "text"), [
    ({"name": "madry", "eps": 25, "steps": 5, "step_size": 8}, "Madry PGD-5, ε 25/255, α 8/255"),
    ({"name": "madry", "eps": "8/255", "steps": 2, "targeted": True}, "Madry PGD-2, ε 8/255, targeted"),
    ({"name": "vanilla"}, "standard training"),
    ({"name": "mixed", "eps": 16, "clean_ratio": 0.5}, "clean/adv mixing PGD, ε 16/255, clean ratio 0.5"),
    ({"name": "advprop", "attack": {"name": "pgd", "eps": 4 / 255, "steps": 2, "step_size": 2 / 255,
                                    "norm": "linf"}, "routes": ["clean", "adv"], "bn_stats": "running"},
     "AdvProp PGD-2, ε 4/255, α 2/255"),
    ({"name": "segmentation", "epochs": 1, "lr": 0.01}, "segmentation, epochs 1, learning rate 0.01"),
])
def test_recipes_read_as_text(recipe, text):
    assert recipe_text(recipe) == text


def test_labels_for_known_keys_and_humanized_unknown_ones():
    assert humanize("train_acc_adv") == "train acc (adv)"
    assert humanize("train_seconds") == "train time (s)"
    assert humanize("clean_acc") == "clean acc"
    assert humanize("val_loss_clean") == "val loss (clean)"
    assert humanize("some_new_key") == "some new key"
    assert humanize("→ vanilla_b") == "→ vanilla_b"  # a transfer target keeps the model's name
    assert network_text({"name": "smallcnn", "width": 16, "act": "silu", "norm": None}) == \
        "smallcnn (width 16, act silu)"


def test_wide_tables_turn_on_their_side_and_intervals_follow_each_rows_n():
    rows = [{"model": m, **{f"c{i}": 0.5 for i in range(15)}} for m in ("a", "b")]
    t = table(rows, 100)
    assert t.columns == ["model", "a", "b"] and len(t.rows) == 15
    t = table([{"model": "a", "x": 0.5}, {"model": "b", "x": 0.5}], [10, 1000])
    assert t.rows[0][1].note == "[23.7, 76.3] n=10" and t.rows[1][1].note.endswith("n=1000")
    t = table([{"mIoU": 0.5}], 10, proportions=False)
    assert t.rows[0][0].text == "0.5000"


def test_a_whitebox_header_speaks_of_a_worst_case_only_over_two_losses():
    from robustlab.report.study import evaluation_meta

    one = {"kind": "whitebox", "n": 10, "options": {"eps": 16, "step_size": 1, "steps": [1, 5], "loss": "ce"}}
    both = {**one, "options": {**one["options"], "loss": "both"}}
    assert not any("worst case" in m for m in evaluation_meta(one))
    assert any("CE and C&W-margin losses" in m and "worst case over the losses" in m for m in evaluation_meta(both))
