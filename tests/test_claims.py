"""Computed verdicts: a study's claims are comparisons over its result cells,
and results.json records whether each held, with the numbers compared."""
from __future__ import annotations

import json

import pytest

from robustlab.app.claims import ClaimError, evaluate_claims, noise_interval, parse_claims
from robustlab.app.cli import main
from robustlab.report.format import wilson
from tests.test_study import TINY, _write

EVALS = {
    "pgd": {"table": [{"model": "plain", "PGD-1": 0.40, "PGD-3": 0.10},
                      {"model": "at", "PGD-1": 0.80, "PGD-3": 0.70}]},
    "transfer": {"table": [{"attack": "ifgsm", "source": "a", "→ a": 1.0, "→ b": 0.30, "→ c": 0.20},
                           {"attack": "mdi2fgsm", "source": "a", "→ a": 0.9, "→ b": 0.40, "→ c": 0.10}]},
    "routes": {"table": [{"model": "m", "route": "clean", "clean accuracy": 0.9},
                         {"model": "m", "route": "adv", "clean accuracy": 0.8}]},
}


def _one(holds_if, **kw):
    claims = parse_claims([{"id": "C1", "says": "something", "holds_if": holds_if, **kw}], EVALS)
    return evaluate_claims(claims, EVALS)[0]


@pytest.mark.parametrize(("holds_if", "verdict"), [
    ("pgd[at].PGD-3 > pgd[plain].PGD-3", "holds"),
    ("pgd[at].PGD-3 < pgd[plain].PGD-3", "does not hold"),
    ("pgd[at].PGD-3 >= pgd[plain].PGD-3 + 0.6", "holds"),          # 0.70 >= 0.70
    ("pgd[at].PGD-3 - pgd[plain].PGD-3 > 0.61", "does not hold"),
    ('transfer[mdi2fgsm, a]."→ b" > transfer[ifgsm, a]."→ b"', "holds"),
    ('mean(transfer[mdi2fgsm, a]."→ [bc]") > mean(transfer[ifgsm, a]."→ [bc]")', "does not hold"),  # 0.25 vs 0.25
    ('max(transfer[*, a]."→ c") == 0.2', "holds"),
    ('routes[m, adv]."clean accuracy" < routes[m, clean]."clean accuracy"', "holds"),
    ("(pgd[at].PGD-1 - pgd[at].PGD-3) < -(pgd[plain].PGD-3 - pgd[plain].PGD-1)", "holds"),  # 0.1 < 0.3
])
def test_a_claim_holds_exactly_when_its_comparison_is_true(holds_if, verdict):
    record = _one(holds_if)
    assert record["verdict"] == verdict, record
    assert all(isinstance(v, float) for v in record["values"].values()) and record["values"]


def test_for_each_holds_only_if_every_instance_does():
    record = _one('transfer[mdi2fgsm, a]."→ {}" > transfer[ifgsm, a]."→ {}"', for_each=["b", "c"])
    assert record["verdict"] == "does not hold"
    assert [(p["item"], p["holds"]) for p in record["for_each"]] == [("b", True), ("c", False)]
    assert record["values"]["transfer[mdi2fgsm, a].→ c"] == 0.1


def test_the_record_leads_with_the_comparison_itself():
    """Two numbers and an operator, however many cells an aggregate read."""
    record = _one("min(pgd[at].\"PGD-*\") > min(pgd[plain].\"PGD-*\")")
    assert (record["left"], record["op"], record["right"]) == (0.70, ">", 0.10)
    assert record["difference"] == pytest.approx(0.60)
    assert record["left_term"] == 'min(pgd[at]."PGD-*")' and record["left_term"] in record["values"]
    assert len(record["values"]) == 6  # the four cells and the two minima, still recorded
    unary = _one("(pgd[at].PGD-1 - pgd[at].PGD-3) < -(pgd[plain].PGD-3 - pgd[plain].PGD-1)")
    assert unary["right_term"] == "-(pgd[plain].PGD-3 - pgd[plain].PGD-1)"
    assert unary["right"] == pytest.approx(0.3) and unary["op"] == "<"
    each = _one('transfer[mdi2fgsm, a]."→ {}" > transfer[ifgsm, a]."→ {}"', for_each=["b", "c"])
    assert "left" not in each  # one comparison per item instead
    assert [(p["item"], p["left"], p["op"], p["right"]) for p in each["for_each"]] == \
        [("b", 0.40, ">", 0.30), ("c", 0.10, ">", 0.20)]
    assert each["for_each"][1]["difference"] == pytest.approx(-0.10)


def _measured(a, b, n=500, kind="whitebox", n_b=None):
    """Two models' PGD accuracy, each in its own evaluation of ``n`` (and ``n_b``) images."""
    return {"x": {"kind": kind, "n": n, "table": [{"model": "sat", "PGD-20": a}]},
            "y": {"kind": kind, "n": n if n_b is None else n_b, "table": [{"model": "at", "PGD-20": b}]}}


def _claim(holds_if, evaluations, **kw):
    return evaluate_claims(parse_claims([{"id": "N", "says": "s", "holds_if": holds_if, **kw}], evaluations),
                           evaluations)[0]


def test_newcombe_interval_matches_the_published_examples():
    """Newcombe (1998), Table II, method 10: 56/70 − 48/80 and 9/10 − 3/10."""
    assert noise_interval(56 / 70, 48 / 80, 70, 80) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    assert noise_interval(9 / 10, 3 / 10, 10, 10) == pytest.approx((0.1705, 0.8090), abs=5e-5)
    lo, hi = wilson(0.3, 50)  # against an exact number: the Wilson interval, shifted
    assert noise_interval(0.3, 0.25, 50, None) == pytest.approx((lo - 0.25, hi - 0.25))


def test_a_difference_far_inside_sampling_error_is_flagged_within_noise():
    record = _claim("x[sat].PGD-20 > y[at].PGD-20", _measured(0.530, 0.532))
    assert record["verdict"] == "does not hold"  # the verdict is unchanged; the flag says how much it means
    assert record["within_noise"] is True and record["difference"] == pytest.approx(-0.002)
    ci = record["interval"]
    assert ci["low"] < -0.05 and ci["high"] > 0.05 and ci["level"] == 0.95 and ci["n"] == [500, 500]
    assert "Newcombe" in ci["method"] and "conservative" in ci["method"] and ci["paired"] is False
    assert _claim("x[sat].PGD-20 < y[at].PGD-20", _measured(0.530, 0.532))["within_noise"] is True  # holds, barely


def test_a_large_difference_is_not_within_noise_and_min_uses_the_cells_n():
    evaluations = {"pgd": {"kind": "whitebox", "n": 500, "table": [
        {"model": "pgd_at", "PGD-1": 0.718, "PGD-20": 0.53}, {"model": "vanilla", "PGD-1": 0.58, "PGD-20": 0.006}]}}
    record = _claim('min(pgd[pgd_at]."PGD-*") > min(pgd[vanilla]."PGD-*")', evaluations)
    assert record["verdict"] == "holds" and record["within_noise"] is False
    assert (record["left"], record["right"]) == (0.53, 0.006) and record["interval"]["n"] == [500, 500]
    assert 0 < record["interval"]["low"] < 0.524 < record["interval"]["high"]
    assert record["interval"]["paired"] is True  # one evaluation: the same images


@pytest.mark.parametrize(("holds_if", "evaluations"), [
    ("pgd[at].PGD-3 > pgd[plain].PGD-3", EVALS),                              # no n recorded
    ("x[sat].PGD-20 > y[at].PGD-20", _measured(0.530, 0.532, n=None)),
    ("x[sat].PGD-20 > y[at].PGD-20", _measured(0.530, 0.532, kind="dag")),    # mIoU, not a proportion of images
    ("x[sat].PGD-20 - 0.1 > y[at].PGD-20", _measured(0.530, 0.532)),          # a sum is no proportion
    ("0.6 > 0.5", _measured(0.530, 0.532)),                                   # nothing measured
])
def test_a_claim_without_a_known_n_carries_no_interval(holds_if, evaluations):
    record = _claim(holds_if, evaluations)
    assert record["verdict"] in ("holds", "does not hold")
    assert "interval" not in record and "within_noise" not in record and "difference" in record


def test_against_a_number_and_for_each_the_flag_follows_what_the_verdict_rests_on():
    assert _claim("x[sat].PGD-20 > 0.52", _measured(0.530, 0.5))["within_noise"] is True
    assert _claim("x[sat].PGD-20 > 0.3", _measured(0.530, 0.5))["within_noise"] is False
    table = [{"model": "a", "p": 0.50, "q": 0.90, "r": 0.10}, {"model": "b", "p": 0.49, "q": 0.10, "r": 0.90}]
    evaluations = {"e": {"kind": "accuracy", "n": 500, "table": table}}
    holds = _claim("e[a].{} > e[b].{}", evaluations, for_each=["p", "q"])  # holds: one item within noise
    assert holds["verdict"] == "holds" and holds["within_noise"] is True
    assert [p["within_noise"] for p in holds["for_each"]] == [True, False]
    fails = _claim("e[a].{} > e[b].{}", evaluations, for_each=["p", "r"])  # fails on r, firmly
    assert fails["verdict"] == "does not hold" and fails["within_noise"] is False
    assert _claim("e[a].{} < e[b].{}", evaluations, for_each=["p", "r"])["within_noise"] is True  # fails on p only


def test_a_missing_cell_is_not_evaluated_rather_than_guessed():
    record = _one("pgd[nosuchmodel].PGD-3 > 0.5")
    assert record["verdict"] == "not evaluated" and "nosuchmodel" in record["reason"]
    assert _one("pgd[at].PGD-20 > 0.5")["verdict"] == "not evaluated"


def test_an_evaluation_that_counted_no_image_is_not_evaluated_rather_than_failed():
    # transfer counts only images every model classifies: on a tiny smoke run none may be, and its rates are 0 / 0
    def record(n, target="b"):
        evals = {"transfer": {"n": n, "value": "success rate on images every model classifies correctly",
                              "table": [{"attack": "ifgsm", "source": "a", "→ b": 0.0},
                                        {"attack": "mdi2fgsm", "source": "a", "→ b": 0.0}]}}
        claims = parse_claims([{"id": "C", "says": "s", "holds_if":
                                f'transfer[mdi2fgsm, a]."→ {target}" > transfer[ifgsm, a]."→ {target}"'}], evals)
        return evaluate_claims(claims, evals)[0]

    empty = record(0)
    assert empty["verdict"] == "not evaluated" and "counted no image there (n = 0" in empty["reason"]
    assert "every model classifies correctly" in empty["reason"]
    assert record(5)["verdict"] == "does not hold"  # the same zeros measured on five images are a result
    # a mistyped cell is reported as mistyped, even where the evaluation counted nothing
    assert "no cell" in record(0, target="nosuch")["reason"]


def test_a_row_that_counted_no_image_is_not_evaluated_where_n_is_given_per_row():
    # a sweep's gaps: one row per swept value, each from its own transfer evaluation with its own n
    rows = [{"resolution": "8", "di2_gap": 0.1}, {"resolution": "16", "di2_gap": 0.0}]
    evals = {"gaps": {"n": [7, 0], "table": rows}}
    claims = parse_claims([{"id": "G", "says": "s", "holds_if": "gaps[16].di2_gap > gaps[8].di2_gap"},
                           {"id": "E", "says": "s", "holds_if": "gaps[8].di2_gap > 0"}], evals)
    grows, eight = evaluate_claims(claims, evals)
    assert grows["verdict"] == "not evaluated" and "gaps[16].di2_gap" in grows["reason"]
    assert "counted no image there" in grows["reason"] and "gaps[8]" not in grows["reason"]
    assert eight["verdict"] == "holds"


@pytest.mark.parametrize(("claim", "match"), [
    ({"id": "X", "says": "s", "holds_if": "pgd[at].PGD-3 >"}, "ends too early"),
    ({"id": "X", "says": "s", "holds_if": "pgd[at].PGD-3 ~ 1"}, "cannot read"),
    ({"id": "X", "says": "s", "holds_if": "nope[at].PGD-3 > 1"}, r"unknown evaluation\(s\) \['nope'\]"),
    ({"id": "X", "says": "s", "holds_if": "pgd[*].PGD-3 > 1"}, "aggregate it with mean"),
    ({"id": "X", "says": "s", "holds_if": "pgd[at].PGD-3 > 1", "for_each": ["a"]}, "no {} to substitute"),
    ({"id": "X", "says": "", "holds_if": "pgd[at].PGD-3 > 1"}, r"missing or empty \['says'\]"),
    ({"id": "X", "says": "s", "holds_if": "1 > 0", "if": 1}, r"unknown key\(s\) \['if'\]"),
])
def test_an_unreadable_claim_is_refused_with_its_id(claim, match):
    with pytest.raises(ClaimError, match=match):
        parse_claims([claim], EVALS)


def test_a_study_refuses_a_bad_claim_before_training(tmp_path):
    raw = {**TINY, "claims": [{"id": "T1", "says": "s", "holds_if": "pgd[at].PGD-3 >> 1"}]}
    out = tmp_path / "run"
    assert main(["study", str(_write(tmp_path, raw)), "--out", str(out)]) == 2
    assert not out.exists()


@pytest.mark.slow
def test_a_study_records_each_claims_verdict_and_values(tmp_path):
    raw = {**TINY, "models": {k: v for k, v in TINY["models"].items() if k != "plain_b"},
           "evaluations": {"pgd": TINY["evaluations"]["pgd"]},
           "claims": [
               {"id": "T-true", "says": "PGD-AT is more robust than vanilla training",
                "holds_if": "pgd[at].PGD-3 > pgd[plain].PGD-3"},
               {"id": "T-false", "says": "a false statement built on purpose",
                "holds_if": "pgd[at].PGD-3 < pgd[plain].PGD-3"}]}
    out = tmp_path / "run"
    assert main(["study", str(_write(tmp_path, raw)), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    claims = {c["id"]: c for c in results["claims"]}
    table = {row["model"]: row["PGD-3"] for row in results["evaluations"]["pgd"]["table"]}
    assert claims["T-true"]["values"] == {"pgd[at].PGD-3": table["at"], "pgd[plain].PGD-3": table["plain"]}
    assert {claims["T-true"]["verdict"], claims["T-false"]["verdict"]} == {"holds", "does not hold"}
    assert claims["T-true"]["verdict"] == ("holds" if table["at"] > table["plain"] else "does not hold")


def test_a_difference_of_rates_reads_in_points_and_of_other_numbers_as_it_is():
    """A BN statistic (|Δ mean| 0.113) is no rate, even in [0, 1]: its difference
    is not 'percentage points'; accuracy differences are."""
    from robustlab.report.format import comparisons

    evaluations = {
        "bn": {"kind": "bn_statistics", "n": 250, "table": [{"model": "mbn", "statistic": "s", "|Δ mean|": 0.113}]},
        "dag": {"kind": "dag", "n": 16, "table": [{"model": "fcn", "mIoU clean": 0.64, "perceptibility": 0.02}]},
        **_measured(0.536, 0.494),
    }
    stat = _claim('bn[mbn, s]."|Δ mean|" > 0', evaluations)
    percept = _claim("dag[fcn].perceptibility < 0.05", evaluations)
    rate = _claim("x[sat].PGD-20 > y[at].PGD-20", evaluations)
    miou = _claim('dag[fcn]."mIoU clean" > 0.5', evaluations)
    assert (stat["unit"], percept["unit"], rate["unit"], miou["unit"]) == ("number", "number", "proportion",
                                                                            "proportion")
    assert "(difference +0.113)" in comparisons(stat)[0][1] and "points" not in comparisons(stat)[0][1]
    assert "(-3.0 points)" not in comparisons(percept)[0][1] and "difference -0.03" in comparisons(percept)[0][1]
    assert comparisons(rate)[0][1].startswith("0.536 > 0.494 (+4.2 points, 95% CI")
    each = _claim('x[{}].PGD-20 > y[at].PGD-20', evaluations, for_each=["sat"])
    assert each["for_each"][0]["unit"] == "proportion"


def test_a_record_from_before_the_unit_is_read_by_its_terms():
    from robustlab.report.format import comparisons

    old = {"left_term": 'bn[mbn, s]."|Δ mean|"', "left": 0.113, "op": ">", "right_term": "0", "right": 0.0}
    assert "(difference +0.113)" in comparisons(old)[0][1]
    rate = {"left_term": "x[sat].PGD-20", "left": 0.536, "op": ">", "right_term": "y[at].PGD-20", "right": 0.494}
    assert "(+4.2 points)" in comparisons(rate)[0][1]
