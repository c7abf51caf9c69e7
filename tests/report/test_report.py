"""The HTML report: the numbers of results.json with their intervals and n,
the verdicts first, adversarial examples where the run kept them, every
string escaped; it renders in headless Chromium without console messages and
without a horizontal page scroll at 1400 and 420 px."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from robustlab.app.cli import main
from robustlab.report import render, write_report
from robustlab.report.html import render_study, write_study_report
from tests.report.report_helpers import CLAIMS, EVIL, eval_results, layout, screenshot, study_results

RESULTS = {
    "kind": "eval", "protocol": "all", "clean_accuracy": 0.8125, "n": 200,
    "options": {"eps": 8 / 255, "step_size": 1 / 255, "steps": [10, 100, 1000], "targeted": False, "restarts": 1},
    "whitebox": {"PGD untargeted": {"steps": [10, 100, 1000], "accuracy": [0.5, 0.4375, 0.4125]}},
    "sanity": {"measurements": {"n": 200, "eps": 8 / 255, "steps": 10, "pgd": 0.4375, "noise": 0.79,
                                "unbounded": 0.0},
               "warnings": [{"check": "noise", "message": "random noise is stronger than PGD", "values": {}}]},
    "transfer": {"success": {"ifgsm": {"A": {"A": 0.9, "B": 0.3}, "B": {"A": 0.25, "B": 0.85}}}, "n": 100},
    "corruption": {"clean_error": 0.2, "mean_error": 0.35, "mce_vs_alexnet": 81.5,
                   "errors": {"gaussian_noise": {"1": 0.25, "5": 0.6}}},
    "history": [{"kind": "epoch", "epoch": 1, "step": 10, "train_loss": 1.5, "clean_acc": 0.7},
                {"kind": "epoch", "epoch": 2, "step": 20, "train_loss": 1.1, "clean_acc": 0.8}],
    "recipe": {"name": "madry"}, "steps": 20, "train_seconds": 3.0, "images_per_second": 850.0,
}


@pytest.fixture()
def run_dir(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    return tmp_path


class _Page(HTMLParser):
    """The text of a page (outside <script>/<style>), its <img> alt texts and its <section> ids."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.alts: list[str] = []
        self.ids: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        if tag == "img":
            self.alts.append(a.get("alt", ""))
        if tag == "section" and a.get("id"):
            self.ids.append(a["id"])

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    return p


# ------------------------------------------------------------------ contents


def test_report_holds_the_numbers_of_results_json(run_dir):
    page = write_report(run_dir).read_text()
    for value in ("0.4375", "0.4125", "Madry", "random noise is stronger than PGD", "85.0%", "data:image/png"):
        assert value in page, value
    assert "43.8%" in page and "[37.1, 50.7] n=200" in page  # 0.4375 of 200 images, Wilson 95%
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "<script" not in page  # no code runs in a report


def test_percentages_carry_a_wilson_interval_and_n_or_say_n_is_missing(study_dir):
    page = write_study_report(study_dir).read_text()
    text = " ".join(_parse(page).text)
    assert "80.2% [76.5, 83.5] n=500" in text  # clean accuracy 0.802 of 500 images
    # the training record holds no n: its accuracies say so instead of an interval
    assert "80.0%†" in text and "n not recorded" in text


def test_section_headers_state_eps_steps_and_protocol(study_dir):
    page = write_study_report(study_dir).read_text()
    assert "ε = 25/255 (0.0980) L∞" in page and "α = 4/255 (0.0157) L∞" in page  # whitebox, config eps: 25
    assert "PGD steps 1, 2, 5, 10, 20" in page and "protocol white-box PGD" in page
    assert "ε = 16/255 (0.0627) L∞" in page and "I-FGSM 20*" in page  # transfer: default steps at ε = 16
    assert "15 corruptions × severities 1, 3, 5" in page
    page = render(eval_results(), "e")
    assert "ε = 8/255 (0.0314) L∞" in page and "protocol standard" in page
    assert "100 steps per stage (50 per targeted stage)" in page  # the targeted stages run half as many


def test_models_table_reads_as_text_without_duplicate_or_raw_columns(study_dir):
    page = write_study_report(study_dir).read_text()
    head = re.search(r'<section class="level2" id="models">.*?</thead>', page, re.S)
    assert head, "models table"
    columns = re.findall(r"<th[^>]*>(.*?)</th>", head.group(0))
    assert len(columns) == len(set(columns))
    assert "train time (s)" in columns and "clean acc" in columns and "train acc (adv)" in columns
    assert not any("_" in c for c in columns), columns  # no raw keys such as train_acc_adv
    assert "Madry PGD-5, ε 25/255, α 8/255" in page and "smallcnn (width 16, act silu)" in page


def test_models_table_gives_training_time_accuracies_their_interval_from_the_recorded_n():
    from robustlab.report.format import interval

    res = study_results()
    for m in res["models"].values():
        m["final"].update(clean_n=500, pgd_acc=0.41, pgd_n=200)
    page = render_study(res)
    models = re.search(r'<section class="level2" id="models">.*?</section>', page, re.S).group(0)
    text = " ".join(_parse(models).text)
    assert f"80.0% {interval(0.8, 500)}" in text and f"41.0% {interval(0.41, 200)}" in text
    columns = re.findall(r"<th[^>]*>(.*?)</th>", models)
    assert "clean acc" in columns and "pgd acc" in columns and not any(c.endswith(" n") for c in columns), columns
    assert "n not recorded" not in text and "on the training batches" in text  # only train acc lacks an n


def test_train_report_history_gives_intervals_where_n_is_recorded():
    from robustlab.report.format import interval

    history = [{"kind": "epoch", "epoch": 1, "step": 10, "train_loss": 1.5, "clean_acc": 0.7, "clean_n": 300,
                "pgd_acc": 0.3, "pgd_n": 100, "train_seconds": 2.0}]
    page = render({"kind": "train", "history": history, "recipe": {"name": "madry"}, "steps": 10,
                   "train_seconds": 2.0, "images_per_second": 100.0}, "t")
    text = " ".join(_parse(page).text)
    assert f"70.0% {interval(0.7, 300)}" in text and f"30.0% {interval(0.3, 100)}" in text
    assert "clean n" not in text and "pgd n" not in text


def test_verdicts_come_first_with_both_outcomes_coloured_and_worded(study_dir):
    page = write_study_report(study_dir).read_text()
    parsed = _parse(page)
    assert parsed.ids[0] == "verdicts"  # before the models and every evaluation
    rows = re.findall(r'<td class="verdict (\w+)">(.*?)</td>', page)
    assert rows == [("holds", "✓ holds"), ("fails", "✗ does not hold")]
    for claim in CLAIMS:
        assert claim["id"] in page and claim["says"] in page
    assert '<span class="k">M-DI²-FGSM → vanilla_b</span> 0.5' in page
    assert '<span class="k">margin › needed</span> 0.01' in page
    css = re.search(r"td\.verdict\.holds \{[^}]*\}", page).group(0) + re.search(r"td\.verdict\.fails \{[^}]*\}",
                                                                             page).group(0)
    assert "--ok" in css and "--bad" in css  # green and red, with the words beside the colour


def test_a_verdict_leads_with_the_comparison_and_folds_its_cells():
    from robustlab.app.claims import evaluate_claims, parse_claims

    res = study_results()
    raw = [{"id": "Q-AT", "says": "PGD-AT is more robust", "holds_if": 'min(pgd[pgd_at]."PGD-*") > 0.05'},
           {"id": "Q-each", "says": "per step", "holds_if": 'pgd[pgd_at]."PGD-{}" < pgd[vanilla]."PGD-{}"',
            "for_each": [1, 20]}]
    res["claims"] = evaluate_claims(parse_claims(raw, res["evaluations"]), res["evaluations"])
    page = render_study(res)
    at = res["claims"][0]
    row = re.search(r"<tr><td class=\"text id\">Q-AT</td>.*?</tr>", page, re.S).group(0)
    ci = at["interval"]
    lead = (f'<p class="comparison"><strong>{at["left"]:.3f} &gt; 0.050</strong> <span class="diff">'
            f'({100 * (at["left"] - 0.05):+.1f} points, 95% CI [{100 * ci["low"]:+.1f}, {100 * ci["high"]:+.1f}])'
            '</span></p>')
    assert lead in row, row
    assert at["within_noise"] is False and "within noise" not in row
    folded = re.search(r'<details class="cells"><summary>values compared \((\d+)\)</summary>(.*?)</details>', row, re.S)
    assert folded and int(folded.group(1)) == len(at["values"]) == 6
    assert row.index(lead) < folded.start() and '<span class="k">pgd[pgd_at].PGD-20</span>' in folded.group(2)
    each = re.search(r"<tr><td class=\"text id\">Q-each</td>.*?</tr>", page, re.S).group(0)
    assert each.count('<p class="comparison">') == 2 and '<span class="k">20:</span>' in each


def test_a_verdict_within_noise_carries_a_badge_and_the_rule_is_stated():
    from robustlab.app.claims import evaluate_claims, parse_claims

    res = study_results()  # clean accuracy of vanilla 0.802 and pgd_at 0.792 on n = 500
    raw = [{"id": "Q-near", "says": "near",
            "holds_if": 'clean[vanilla]."clean accuracy" > clean[pgd_at]."clean accuracy"'},
           {"id": "Q-far", "says": "far", "holds_if": "pgd[vanilla].PGD-1 > pgd[advprop].PGD-20"}]
    res["claims"] = evaluate_claims(parse_claims(raw, res["evaluations"]), res["evaluations"])
    assert [c["within_noise"] for c in res["claims"]] == [True, False]
    page = render_study(res)
    cells = dict(re.findall(r'<td class="text id">(.*?)</td>.*?<td class="verdict \w+">(.*?)</td>', page, re.S))
    assert 'class="badge noise"' in cells["Q-near"] and "within noise" in cells["Q-near"]
    assert "badge" not in cells["Q-far"]
    assert "Newcombe" in page and "contains 0" in page


def test_a_claim_not_evaluated_says_why_and_shows_its_rule():
    claim = {"id": "C9", "says": "s", "holds_if": "pgd[ghost].PGD-3 > 0.5", "verdict": "not evaluated",
             "reason": "no row ghost in pgd", "values": {}}
    page = render_study(study_results([claim]))
    assert '<td class="verdict unclear">? not evaluated</td>' in page
    assert "pgd[ghost].PGD-3 &gt; 0.5" in page and "no row ghost in pgd" in page


def test_a_transfer_over_no_image_shows_dashes_a_warning_and_no_heatmap():
    res = study_results()
    full = render_study(res)
    res["evaluations"]["transfer"]["n"] = 0  # no image every model classifies: every rate is 0 / 0
    empty = render_study(res)
    section = empty[empty.index('id="evaluation-transfer"'):]
    shown = section[:section.index('<details class="exact">')]  # the exact values (results.json's) stay below
    assert "counted no image (n = 0)" in shown and shown.count("n=0</small>") == 6 and "%" not in \
        re.sub(r"<[^>]+>", "", shown.split("<table")[1])
    assert "heatmap of transfer success rates" in full and "heatmap of transfer success rates" not in empty
    # the same for an eval run's transfer protocol
    from robustlab.report.blocks import Figure, Note
    from robustlab.report.runs import transfer_blocks

    success = res["evaluations"]["transfer"]["raw"]["success"]
    assert any(isinstance(b, Figure) for b in transfer_blocks(success, 300))
    none = transfer_blocks(success, 0)
    assert not any(isinstance(b, Figure) for b in none) and isinstance(none[0], Note) and "n = 0" in none[0].text


def test_a_smoke_form_says_so_at_the_top():
    assert "Smoke form." in render_study({**study_results(), "form": "smoke"})
    assert "Smoke form." not in render_study({**study_results(), "form": "full"})


def test_no_claims_no_verdict_section(tmp_path):
    page = render_study(study_results())
    assert 'id="verdicts"' not in page and "Verdicts" not in page


def test_a_malicious_model_name_is_escaped_everywhere(tmp_path):
    res = study_results(models=("vanilla", EVIL, "sat", "advprop", "vanilla_b"))
    res["claim"] = "<b>bold</b> claim"
    res["claims"] = [{"id": EVIL, "says": EVIL, "verdict": EVIL, "values": {EVIL: EVIL}}]
    page = render_study(res)
    assert "<script" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    page = render(eval_results(EVIL), "eval " + EVIL)
    assert "<script" not in page and "&lt;script&gt;" in page


# ------------------------------------------------------------------ adversarial examples


def _example_alts(page: str) -> list[str]:
    return [a for a in _parse(page).alts if a.startswith(("adversarial example", "perturbation", "clean image"))]


def test_eval_report_shows_the_kept_adversarial_examples(eval_dir):
    page = write_report(eval_dir).read_text()
    alts = _example_alts(page)
    assert sum(a.startswith("adversarial example") for a in alts) == 4
    assert sum(a.startswith("perturbation") for a in alts) == 4
    text = " ".join(_parse(page).text)
    # the successful attacks first, then the robust samples, then those wrong already when clean
    assert text.index("#0 · broken by apgd-ce at step 12") < text.index("#1 · robust") < \
        text.index("#3 · robust") < text.index("#2 · wrong when clean")
    (eval_dir / "examples-model.safetensors").unlink()
    assert _example_alts(write_report(eval_dir).read_text()) == []  # nothing kept: no grid


def test_study_report_shows_adversarial_examples_where_the_study_kept_them(study_dir):
    page = write_study_report(study_dir).read_text()
    alts = _example_alts(page)
    assert sum(a.startswith("adversarial example") for a in alts) == 4
    assert page.index("adversarial examples of") > page.index('id="evaluation-pgd"')  # under the pgd evaluation
    for f in (study_dir / "evaluations").rglob("*.safetensors"):
        f.unlink()
    assert _example_alts(write_study_report(study_dir).read_text()) == []


def test_attack_report_shows_clean_adversarial_and_perturbation(tmp_path):
    from tests.report.report_helpers import images

    t = images(3, 1, 8, 16 / 255)
    (tmp_path / "results.json").write_text(json.dumps({
        "attack": {"name": "pgd", "norm": "linf", "eps": 16 / 255, "eps_255": 16.0, "steps": 10,
                   "step_size": 2 / 255, "loss": "ce", "targeted": False, "random_start": True},
        "n": 3, "clean_accuracy": 2 / 3, "adversarial_accuracy": 0.0, "success_rate_on_correct": 1.0,
        "summary": {"success_rate": 1.0, "linf_max_255": 16.0}, "seconds": 0.1, "images_per_second": 30.0,
        "model": "m", "data": {"name": "digits", "split": "test", "limit": 3, "n": 3}}))
    save_file({"x_adv": t["adversarial"], "clean": t["clean"], "y": torch.tensor([1, 2, 3]),
               "clean_pred": torch.tensor([1, 2, 0]), "adv_pred": torch.tensor([4, 5, 0]),
               "linf": torch.full((3,), 16 / 255)}, str(tmp_path / "adversarial.safetensors"))
    page = write_report(tmp_path).read_text()
    assert sum(a.startswith("adversarial example") for a in _example_alts(page)) == 3
    assert "PGD" in page and "ε = 16/255 (0.0627) L∞" in page and "10 steps" in page
    assert "66.7%" in page and "n=3" in page and "(fooled)" in page and "(wrong when clean)" in page


def test_a_real_attack_run_reports_its_examples(tmp_path, capsys):
    """robustlab attack on digits, its examples.safetensors removed (as in a run
    made before it was written): adversarial.safetensors holds no clean images;
    the report reads them back from the data and checks them against the run's
    own ‖δ‖∞."""
    out = tmp_path / "att"
    assert main(["attack", "--model", "smallcnn", "--data", "digits", "--limit", "6", "--attack", "pgd",
                 "--eps", "16", "--steps", "3", "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    (out / "examples.safetensors").unlink()
    page = write_report(out).read_text()
    alts = _example_alts(page)
    assert sum(a.startswith("adversarial example") for a in alts) == 6
    assert sum(a.startswith("perturbation") for a in alts) == 6, "clean images read back and matched"
    assert "n=6" in page


# ------------------------------------------------------------------ Chromium


def test_report_renders_in_chromium_without_console_messages(run_dir, tmp_path):
    report = write_report(run_dir)
    console = screenshot(report, tmp_path / "shot.png", 1400)
    assert console == []
    img = np.asarray(Image.open(tmp_path / "shot.png").convert("L"), dtype=float)
    assert img.std() > 10 and (img < 128).mean() > 0.01  # text and plots, not a blank page


def test_console_errors_are_detected(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>console.error('boom')</script></body></html>")
    assert any("boom" in line for line in screenshot(bad, tmp_path / "bad.png", 1400))


@pytest.fixture(scope="module")
def wide_reports(tmp_path_factory):
    """The widest hand-built reports: a study with 15 corruption columns, a robust eval, a curve eval."""
    from tests.report.report_helpers import images

    root = tmp_path_factory.mktemp("wide")
    study, ev, curves = root / "study", root / "eval", root / "curves"
    for d in (study / "evaluations" / "pgd", ev, curves):
        d.mkdir(parents=True)
    (study / "results.json").write_text(json.dumps(study_results(CLAIMS)))
    save_file(images(), str(study / "evaluations" / "pgd" / "examples-vanilla.safetensors"))
    (ev / "results.json").write_text(json.dumps(eval_results("a-rather-long-model-name-" * 3)))
    (curves / "results.json").write_text(json.dumps(RESULTS))
    return {"study": write_report(study), "eval": write_report(ev), "curves": write_report(curves)}


@pytest.mark.parametrize("width", [1400, 420])
def test_no_horizontal_page_scroll_and_tables_fit_at_1400(wide_reports, tmp_path, width):
    """The page never scrolls sideways; at 1400 px no table needs its own
    scroll bar either; at 420 px wide tables scroll inside their wrapper.
    Screenshots at both widths are not blank."""
    wide = {}
    for name, report in wide_reports.items():
        fit = layout(report, width, tmp_path)
        assert fit["inner"] == width, fit
        assert fit["scroll"] <= fit["inner"], (name, width, fit)
        wide[name] = fit["wide"]
        screenshot(report, tmp_path / f"{name}-{width}.png", width)
        img = np.asarray(Image.open(tmp_path / f"{name}-{width}.png").convert("L"), dtype=float)
        assert img.shape[1] == width and img.std() > 10, name
    if width == 1400:
        assert wide == {name: [] for name in wide_reports}
    else:
        assert wide["study"], "at 420 px some table scrolls in its own wrapper"


def test_the_layout_probe_sees_a_page_that_scrolls(tmp_path):
    wide = tmp_path / "wide.html"
    wide.write_text("<!DOCTYPE html><html><body><div style='width:1600px'>x</div></body></html>")
    fit = layout(wide, 1400, tmp_path)
    assert fit["scroll"] > fit["inner"] == 1400


def test_missing_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json"):
        write_report(tmp_path)
