"""``robustlab report RUN_DIR... --markdown``: each study run as a markdown
section (title, chapter, conditions, verdicts with the numbers compared and
their n), and the generated blocks of README.md / docs/results.md."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from robustlab.app.claims import evaluate_claims, parse_claims
from robustlab.app.cli import main
from robustlab.report.markdown import replace_block, run_form, studies_markdown, update_file
from tests.report.report_helpers import study_results

SMOKE = {"limit": 32, "defaults.train.epochs": 1}
CLAIMS = [
    {"id": "Q-true", "says": "the hand-built table ranks vanilla above PGD-AT under PGD-20",
     "holds_if": "pgd[vanilla].PGD-20 > pgd[pgd_at].PGD-20"},
    {"id": "Q-false", "says": "a false statement | with a pipe, built on purpose",
     "holds_if": "pgd[pgd_at].PGD-20 > pgd[vanilla].PGD-20"},
    {"id": "Q-mean", "says": "mean transfer of M-DI² beats I-FGSM",
     "holds_if": 'mean(transfer[mdi2fgsm, *]."→ *") > mean(transfer[ifgsm, *]."→ *")'},
    {"id": "Q-gone", "says": "an evaluation the smoke form dropped", "holds_if": "pgd[pgd_at].PGD-50 > 0.5"},
]


def _study_dir(tmp_path: Path, name: str = "quick", *, smoke: bool = True) -> Path:
    """A study run directory as ``robustlab study`` leaves it: results.json
    whose claims are computed by the claims module, study.yaml, run.json."""
    run = tmp_path / name
    run.mkdir()
    res = study_results()
    res["claims"] = evaluate_claims(parse_claims(CLAIMS, res["evaluations"]), res["evaluations"])
    (run / "results.json").write_text(json.dumps(res))
    raw = {"title": res["title"], "limit": 32 if smoke else 500,
           "defaults": {"train": {"epochs": 1 if smoke else 3}}, "smoke": SMOKE}
    (run / "study.yaml").write_text(yaml.safe_dump(raw))
    (run / "run.json").write_text(json.dumps({"kind": "study", "created": "2027-01-02T03:04:05+0000",
                                              "robustlab": "0.9.0"}))
    return run


def _row(md: str, claim_id: str) -> str:
    rows = [line for line in md.splitlines() if line.startswith(f"| {claim_id} |")]
    assert len(rows) == 1, md
    return rows[0]


def test_each_claim_appears_with_its_verdict_and_the_numbers_compared(tmp_path):
    run = _study_dir(tmp_path)
    res = json.loads((run / "results.json").read_text())
    pgd = {r["model"]: r["PGD-20"] for r in res["evaluations"]["pgd"]["table"]}
    md = studies_markdown([run])
    assert md.startswith(f"### {res['title']} (`quickstart`, thesis ch. 4)")
    for claim in res["claims"]:
        assert f"**{claim['verdict']}**" in _row(md, claim["id"])
    assert pgd["vanilla"] > pgd["pgd_at"]
    true_row, false_row = _row(md, "Q-true"), _row(md, "Q-false")
    assert "**holds**" in true_row and "**does not hold**" in false_row
    for row in (true_row, false_row):  # both cells, their values and the evaluation's n
        assert f"pgd[pgd_at].PGD-20 = {pgd['pgd_at']:.4f} (n = 500)" in row
        assert f"pgd[vanilla].PGD-20 = {pgd['vanilla']:.4f} (n = 500)" in row
    assert "a false statement \\| with a pipe" in false_row  # the table keeps its columns
    mean_row = _row(md, "Q-mean")
    assert 'mean(transfer[mdi2fgsm, "*"]."→ *") = ' in mean_row and "(n = 300)" in mean_row
    gone = _row(md, "Q-gone")
    assert "**not evaluated**" in gone and "PGD-50" in gone


def test_a_row_leads_with_the_two_numbers_compared_and_folds_the_cells(tmp_path):
    run = _study_dir(tmp_path)
    res = json.loads((run / "results.json").read_text())
    claim = next(c for c in res["claims"] if c["id"] == "Q-mean")
    numbers = _row(studies_markdown([run]), "Q-mean").split(" | ")[3].removesuffix(" |")
    ci = claim["interval"]
    lead = (f"**{claim['left']:.3f} > {claim['right']:.3f}** ({100 * claim['difference']:+.1f} points, "
            f"95% CI [{100 * ci['low']:+.1f}, {100 * ci['high']:+.1f}])")
    assert numbers.startswith(lead), numbers
    folded = numbers[len(lead):]
    assert folded.startswith(f" <details><summary>values compared ({len(claim['values'])})</summary>")
    assert all(label in folded for label in claim["values"]) and folded.endswith("</details>")
    gone = _row(studies_markdown([run]), "Q-gone")
    assert "<details>" not in gone  # nothing was compared: the reason is all there is


def test_a_verdict_within_noise_says_so(tmp_path):
    run = _study_dir(tmp_path)
    res = json.loads((run / "results.json").read_text())
    near = {"id": "Q-near", "says": "1 point apart on 500 images",
            "holds_if": 'clean[vanilla]."clean accuracy" > clean[pgd_at]."clean accuracy"'}
    res["claims"] = evaluate_claims(parse_claims([*CLAIMS, near], res["evaluations"]), res["evaluations"])
    (run / "results.json").write_text(json.dumps(res))
    md = studies_markdown([run])
    for claim in res["claims"]:
        if claim["verdict"] != "not evaluated":
            assert isinstance(claim["within_noise"], bool)
            assert ("(within noise)" in _row(md, claim["id"])) == claim["within_noise"]
    assert any(c.get("within_noise") for c in res["claims"]) and not all(c.get("within_noise") for c in res["claims"])


def test_conditions_say_smoke_or_full_limit_n_date_and_commit(tmp_path):
    smoke, full = _study_dir(tmp_path, "s"), _study_dir(tmp_path, "f", smoke=False)
    md = studies_markdown([smoke])
    assert "form: **smoke**" in md and "not a result" in md
    assert "limit: 32 test images per evaluation" in md and "n: 200–500 per evaluation" in md
    assert "run: 2027-01-02T03:04:05+0000" in md and "robustlab 0.9.0" in md and "commit: not recorded" in md
    assert "form: **full**" in studies_markdown([full]) and run_form({}, full) == "full"
    assert run_form({"smoke": False}, smoke) == "full"  # an explicit flag wins over the inference


def test_the_recorded_form_and_commit_win_over_the_inference(tmp_path):
    run = _study_dir(tmp_path)  # its study.yaml infers smoke
    res = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**res, "form": "full"}))
    run_json = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**run_json, "commit": "0123456789abcdef0123456789abcdef01234567"}))
    md = studies_markdown([run])
    assert "form: **full**" in md and "form: **smoke**" not in md
    assert "commit: `0123456789abcdef0123456789abcdef01234567`" in md and "commit: not recorded" not in md
    (run / "study.yaml").unlink()  # nothing left to infer from: the record alone
    assert run_form({"form": "smoke"}, run) == "smoke" and run_form({}, run) == "not recorded"


def test_the_markdown_of_a_real_smoke_study(tmp_path):
    """A tiny study run by ``robustlab study --smoke``: its claims, verdicts and values reach the markdown."""
    from tests.test_study import TINY

    raw = {**TINY, "models": {"plain": TINY["models"]["plain"], "at": TINY["models"]["at"]},
           "defaults": {**TINY["defaults"], "data": {"limit": 512, "eval_limit": 64}},
           "evaluations": {"pgd": {**TINY["evaluations"]["pgd"], "steps": [1, 2]}},
           "smoke": {"defaults.train.epochs": 1, "defaults.data.limit": 128, "limit": 16},
           "claims": [{"id": "S-true", "says": "PGD-1 leaves at least as many as PGD-2",
                       "holds_if": "pgd[plain].PGD-1 >= pgd[plain].PGD-2"},
                      {"id": "S-false", "says": "accuracy above 100%", "holds_if": "pgd[plain].PGD-1 > 1"}]}
    config, out = tmp_path / "tiny.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["study", str(config), "--smoke", "--out", str(out), "-q"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["form"] == "smoke"  # recorded, not inferred
    md = studies_markdown([out])
    assert "form: **smoke**" in md and "limit: 16" in md
    commit = json.loads((out / "run.json").read_text())["commit"]  # the tests run from a git checkout
    assert commit and f"commit: `{commit}`" in md
    for claim in res["claims"]:
        row = _row(md, claim["id"])
        assert f"**{claim['verdict']}**" in row
        for label, value in claim["values"].items():
            assert f"{label} = {value:.4f} (n = 16)" in row
    assert "**does not hold**" in _row(md, "S-false")


def test_cli_prints_writes_and_updates_marked_blocks(tmp_path, capsys):
    a, b = _study_dir(tmp_path, "a"), _study_dir(tmp_path, "b", smoke=False)
    assert main(["report", str(a), str(b), "--markdown"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("### ") == 2 and "**does not hold**" in printed
    out = tmp_path / "results.md"
    assert main(["report", str(a), "--markdown", "--out", str(out)]) == 0
    assert out.read_text() == studies_markdown([a])
    doc = tmp_path / "doc.md"
    doc.write_text("# Results\nhand-written prose\n<!-- results-summary:begin -->\nOLDROW\n"
                   "<!-- results-summary:end -->\nbetween\n<!-- results:begin -->\nOLDTABLE\n"
                   "<!-- results:end -->\ntail\n")
    assert main(["report", str(a), str(b), "--markdown", "--update", str(doc)]) == 0
    text = doc.read_text()
    assert "OLDROW" not in text and "OLDTABLE" not in text and text.startswith("# Results\nhand-written prose\n")
    assert "\nbetween\n" in text and text.endswith("<!-- results:end -->\ntail\n")
    assert "#### vanilla vs PGD-AT" in text and "| Q-false |" in text
    assert "| quickstart | 4 | smoke | 2 | 1 | 1 | 0 | Q-false |" in text
    assert "| quickstart | 4 | full | 2 | 1 | 1 | 0 | Q-false |" in text
    again = text
    update_file(doc, [a, b])
    assert doc.read_text() == again  # regenerating is idempotent


def test_summary_counts_and_marks_verdicts_within_noise(tmp_path):
    from robustlab.report.markdown import summary_markdown

    run = _study_dir(tmp_path)
    results = json.loads((run / "results.json").read_text())
    for claim in results["claims"]:
        if claim["id"] in ("Q-true", "Q-false"):
            claim["within_noise"] = True
    (run / "results.json").write_text(json.dumps(results))
    table = summary_markdown([run])
    assert "| quickstart | 4 | smoke | 2 | 1 | 1 | 2 | Q-false~ |" in table
    assert "~: within noise" in table
    for claim in results["claims"]:  # a comparison with no sampling interval is counted apart, not as outside noise
        if claim["id"] == "Q-true":
            claim.pop("within_noise")
    (run / "results.json").write_text(json.dumps(results))
    assert "| quickstart | 4 | smoke | 2 | 1 | 1 | 1 (no interval: 1) | Q-false~ |" in summary_markdown([run])


@pytest.mark.parametrize(("argv", "message"), [
    (lambda t, run: ["report", str(t / "empty"), "--markdown"], "has no results.json"),
    (lambda t, run: ["report", str(run), str(t / "empty"), "--markdown"], "has no results.json"),
    (lambda t, run: ["report", str(t / "train"), "--markdown"], "not a study"),
    (lambda t, run: ["report", str(run), "--markdown", "--update", str(t / "nomarkers.md")], "no generated block"),
    (lambda t, run: ["report", str(run), "--markdown", "--update", str(t / "missing.md")], "no such markdown"),
    (lambda t, run: ["report", str(run), "--out", str(t / "x.md")], "go with --markdown"),
])
def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, argv, message):
    run = _study_dir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "results.json").write_text(json.dumps({"kind": "train", "final": {}}))
    (tmp_path / "nomarkers.md").write_text("# nothing to generate here\n")
    assert main(argv(tmp_path, run)) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err and captured.out == ""
    assert (tmp_path / "nomarkers.md").read_text() == "# nothing to generate here\n"


def test_replace_block_touches_only_the_block():
    text = "a\n<!-- results:begin -->\nx\n<!-- results:end -->\nb\n"
    new = replace_block(text, "results", "| t |")
    assert new.startswith("a\n<!-- results:begin -->\n") and new.endswith("<!-- results:end -->\nb\n")
    assert "| t |" in new and "\nx\n" not in new
    with pytest.raises(ValueError, match="no <!-- results-summary:begin -->"):
        replace_block(text, "results-summary", "")


def test_without_markdown_report_still_writes_each_report_html(tmp_path, capsys):
    a, b = _study_dir(tmp_path, "a"), _study_dir(tmp_path, "b")
    assert main(["report", str(a)]) == 0 and (a / "report.html").is_file()
    assert main(["report", str(a), str(b)]) == 0 and (b / "report.html").is_file()
    assert capsys.readouterr().out.split() == [str(a / "report.html"), str(a / "report.html"), str(b / "report.html")]


def test_benchmarks_script_regenerates_the_blocks_from_a_folder_of_runs(tmp_path):
    """benchmarks/results_markdown.py over run_studies_gpu.sh's $OUT: every study below it, quickstart first."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "studies"
    out.mkdir()
    for name in ("ch5_smooth", "quickstart"):
        _study_dir(out, name)
    (out / "not-a-run").mkdir()
    doc = tmp_path / "results.md"
    doc.write_text("<!-- results:begin -->\n<!-- results:end -->\n")
    script = root / "benchmarks" / "results_markdown.py"
    done = subprocess.run([sys.executable, str(script), str(out), "--files", str(doc)], capture_output=True,
                          text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    text = doc.read_text()
    assert text.count("#### ") == 2
    assert text.index("run directory `quickstart`") < text.index("run directory `ch5_smooth`")
    assert text.count("| Q-false |") == 2
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "nothing"), "--files", str(doc)],
                         capture_output=True, text=True, cwd=root)
    assert bad.returncode == 2 and "no such run directory" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(("doc", "block"), [("docs/results.md", "results"), ("README.md", "results-summary")])
def test_the_shipped_docs_carry_the_generated_block(tmp_path, doc, block):
    """docs/results.md and the README hold the markers the generator fills; a copy regenerates cleanly."""
    text = (Path(__file__).resolve().parents[2] / doc).read_text(encoding="utf-8")
    assert text.count(f"<!-- {block}:begin -->") == 1 and text.count(f"<!-- {block}:end -->") == 1
    copy = tmp_path / Path(doc).name
    copy.write_text(text, encoding="utf-8")
    assert update_file(copy, [_study_dir(tmp_path)]) == [block]
    new = copy.read_text(encoding="utf-8")
    assert "| Q-false |" in new and new.split(f"<!-- {block}:begin -->")[0] == text.split(f"<!-- {block}:begin -->")[0]


def test_each_evaluation_table_is_folded_after_the_verdicts_in_percent(tmp_path):
    """The evaluation tables follow the verdicts, each in a <details> with its
    kind and n; a proportion reads as 100× results.json's value, a number that
    is not a proportion (a DAG mIoU table, a gaps difference) as it is."""
    run = _study_dir(tmp_path)
    res = json.loads((run / "results.json").read_text())
    res["evaluations"]["dense"] = {"kind": "dag", "n": 4, "options": {"kind": "dag"},
                                   "table": [{"model": "fcn", "mIoU clean": 0.6413, "iterations": 37.5}]}
    res["evaluations"]["gaps"] = {"kind": "gaps", "n": 3, "options": {"kind": "gaps",
                                                                      "differences": {"di2_gap": ["di2", "i"]}},
                                  "table": [{"resolution": 28, "di2": 0.25, "i": 0.5, "di2_gap": -0.25}]}
    (run / "results.json").write_text(json.dumps(res))
    md = studies_markdown([run])
    assert md.index("| claim | says |") < md.index("<details><summary><b>clean</b>")
    clean = res["evaluations"]["clean"]["table"]
    assert f"| {clean[0]['model']} | {100 * clean[0]['clean accuracy']:.1f} |" in md
    assert "<b>pgd</b> (whitebox" in md and "n = 500; %)" in md
    assert "| fcn | 0.6413 | 37.5 |" in md  # mIoU and iteration counts are not percentages
    assert "| 28 | 25.0 | 50.0 | -25.0 |" in md  # success rates in %, their difference in points
    assert md.count("<details><summary><b>") == len(res["evaluations"])
    assert "<details><summary><b>" not in studies_markdown([run], tables=False)
