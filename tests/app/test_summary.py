"""Terminal summaries within 100 columns: wide tables keep their key columns,
long lists wrap, and nothing of a path is cut."""
from __future__ import annotations

from robustlab.app.evaluate import format_eval_summary
from robustlab.app.study import format_study_summary
from robustlab.app.summary import WIDTH, clip, fit_table, path_lines, result_line, wrap_items
from robustlab.app.train import format_train_summary
from robustlab.report.markdown import evaluation_cells

STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]
WIDE = [{"model": f"resnet152_denoise_{i}", "clean accuracy": 0.9 - i / 100,
         **{f"PGD-{s}": 0.5 - s / 10000 for s in STEPS}} for i in range(30)]


def _fits(text: str) -> bool:
    return all(len(line) <= WIDTH for line in text.splitlines())


def test_clip_and_wrap():
    assert clip("x" * 120) == "x" * 99 + "…" and clip("short") == "short"
    lines = wrap_items("  metrics: ", [f"key_{i} 0.{i:04d}" for i in range(40)])
    assert len(lines) > 1 and all(len(line) <= WIDTH for line in lines)
    assert " ".join(lines).split(", ")[-1].strip() == "key_39 0.0039"  # nothing lost


def test_a_wide_table_keeps_its_name_and_last_column_and_names_the_others():
    columns = list(WIDE[0])
    rows = [[str(v) for v in r.values()] for r in WIDE]
    out = fit_table(columns, rows, max_rows=20)
    assert all(len(line) <= WIDTH for line in out)
    header = out[0].split()
    assert header[0] == "model" and header[-1] == "PGD-2000"  # the strongest attack stays
    assert out[21] == "  … 10 more rows in the report"
    assert "in the report also" in out[-2] + out[-1] and out[-1].endswith(")")
    dropped = " ".join(out[22:])
    assert all(c in dropped or c in out[0] for c in columns)  # every column shown or named


def test_a_narrow_table_is_shown_whole():
    out = fit_table(["model", "clean"], [["a", "0.9"], ["b", "0.8"]])
    assert out == ["  model  clean", "  a      0.9", "  b      0.8"]


def test_a_long_path_stands_alone_and_whole():
    path = "/a/" + "very_long_directory/" * 8 + "report.html"
    assert path_lines("report", path) == ["  report:", path]
    assert path_lines("report", "/short/report.html") == ["  report: /short/report.html"]


def test_study_summary_fits():
    results = {"name": "ch4_denoise", "title": "Feature denoising " * 10, "seconds": 12.0,
               "claims": [{"id": "c1", "verdict": "holds", "says": "denoising helps " * 10}],
               "evaluations": {"pgd": {"kind": "pgd", "n": 1000, "table": WIDE}}, "report": "/tmp/r/report.html"}
    text = format_study_summary(results)
    assert _fits(text) and "PGD-2000" in text and "resnet152_denoise_0" in text
    assert " ".join(text.split()).count("denoising helps") == 10  # the claim is wrapped, never cut
    smoke = format_study_summary({**results, "form": "smoke",
                                  "claims": [{**results["claims"][0], "within_noise": True}]})
    assert "smoke form (--smoke)" in smoke and "c1: HOLDS (within noise)" in smoke and _fits(smoke)
    # an evaluation of accuracies in percent, as the report and the markdown give them
    assert result_line({"kind": "whitebox", "table": WIDE[:2]}) == \
        "PGD-2000: resnet152_denoise_0 30.0%, resnet152_denoise_1 30.0%"
    assert "30.0" in text and "0.3000" not in text
    corruption = {"kind": "corruption", "table": [{"model": "a", "clean": 0.9, "corrupted (mean)": 0.5, "fog": 0.2}]}
    assert result_line(corruption) == "corrupted (mean): a 50.0%"  # the mean, not the last corruption
    # a transfer that counted no image has no rates to give, rather than rates of 0 %
    empty = {"kind": "transfer", "n": 0, "value": "success rate on images every model classifies correctly",
             "table": [{"attack": "ifgsm", "source": "a", "→ b": 0.0}]}
    assert result_line(empty).startswith("counted no image (n = 0)") and "0.0%" not in result_line(empty)
    assert result_line({**empty, "n": 3}) == "→ b: ifgsm 0.0%"
    # per-row counts (a sweep's gaps): only the row over no image loses its numbers
    rows = [{"resolution": "8", "ifgsm": 0.5, "di2_gap": 0.25}, {"resolution": "16", "ifgsm": 0.0, "di2_gap": 0.0}]
    gaps = {"kind": "gaps", "n": [3, 0], "options": {"differences": {"di2_gap": ["di2fgsm", "ifgsm"]}}, "table": rows}
    assert evaluation_cells(gaps)[1] == [["8", "50.0", "+25.0"], ["16", "—", "—"]]
    assert result_line(gaps) == "di2_gap: 8 +25.0, 16 —"


def test_eval_summary_fits():
    curve = {"steps": STEPS, "accuracy": [0.5 - i / 100 for i in range(len(STEPS))]}
    model = {"clean_accuracy": 0.9, "robust_accuracy": 0.4, "per_attack": {f"attack-{i}": 0.5 for i in range(12)},
             "warnings": ["the loss does not grow with the budget " * 5],
             "whitebox": {"PGD untargeted": curve, "PGD targeted (C&W margin)": curve},
             "sanity": {"warnings": [{"check": "noise", "message": "random noise beats PGD " * 8}]},
             "corruption": {"mean_error": 0.3, "mce_vs_alexnet": 80.0}}
    results = {"protocol": "all", "data": "cifar10", "n": 1000, "eps": 8 / 255, "eps_255": 8.0, "norm": "linf",
               "models": {f"model_{i}": model for i in range(3)}, "report": "/tmp/r/report.html",
               "transfer": {"success": {"mdi2fgsm": {f"model_{i}": {f"model_{j}": 0.5 for j in range(3)}
                                                      for i in range(3)}}}}
    text = format_eval_summary(results)
    assert _fits(text) and "1000 images), ε = 8/255 (linf):" in text and "model_2→model_2 50%" in text
    flat = " ".join(text.split())
    assert flat.count("the loss does not grow with the budget") == 15  # warnings wrapped, never cut
    assert "1: 50.0%" in text and "mean error 30.0%" in text  # percentages, as the accuracies
    # An L2 budget is pixels, not a fraction of 255: ε₂ = 8 read "ε = 2040/255 (l2)".
    assert "ε₂ = 8 (l2):" in format_eval_summary({**results, "eps": 8.0, "eps_255": 2040.0, "norm": "l2"})
    # the transfer rates say over how many images; over none, they are not printed as 0 %
    counted = {**results, "transfer": {**results["transfer"], "n": 7}}
    assert "transfer success on the 7 images every model classifies correctly" in format_eval_summary(counted)
    empty = format_eval_summary({**results, "transfer": {**results["transfer"], "n": 0}})
    assert "no image is classified correctly by every model (n = 0)" in empty and "→model_2" not in empty
    assert _fits(empty)


def test_train_summary_fits():
    final = {"kind": "epoch", "epoch": 90, "step": 450000, **{f"clean_acc_route_{i}": 0.9 for i in range(10)},
             "clean_n": 500, "train_loss": 1.23456}
    results = {"recipe": {"name": "advprop_finegrained"}, "steps": 450000, "train_seconds": 86400.0,
               "images_per_second": 1234.5, "final": final, "run_dir": "runs/train-advprop"}
    text = format_train_summary(results)
    assert _fits(text) and "train_loss 1.235" in text and "clean_acc_route_9 90.0% (n=500)" in text
    assert "450000 steps, 24.0 h (1234 img/s)" in text and "clean_n" not in text  # n sits by its accuracies
