"""Plots for reports: log axes labelled at every decade with minor ticks, one
fixed colour scale for transfer heatmaps with readable cell labels, one line
per model in the corruption curves."""
from __future__ import annotations

import matplotlib.colors as mcolors
import pytest

from robustlab.report import plots


def _labels(ax):
    ax.figure.canvas.draw()
    return {round(t.get_loc(), 6): t.label1.get_text() for t in ax.xaxis.get_major_ticks()
            if ax.get_xlim()[0] <= t.get_loc() <= ax.get_xlim()[1]}


def test_log_step_axis_labels_every_decade_and_has_minor_ticks():
    fig = plots.robustness_curves({"a": {"steps": [10, 20, 50, 100, 200, 500, 1000, 2000],
                                         "accuracy": [0.5, 0.45, 0.4, 0.39, 0.38, 0.38, 0.37, 0.37]}})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert _labels(ax) == {10.0: "10", 100.0: "100", 1000.0: "1000"}
    minor = [v for v in ax.xaxis.get_minorticklocs() if ax.get_xlim()[0] <= v <= ax.get_xlim()[1]]
    assert 20 in [round(v) for v in minor] and 500 in [round(v) for v in minor]
    assert ax.get_ylim()[0] == 0  # accuracy axes start at 0
    plots.plt.close(fig)


def test_a_short_range_still_shows_a_decade_and_zero_steps_is_a_line():
    fig = plots.robustness_curves({"a": {"steps": [0, 3, 5, 8], "accuracy": [0.9, 0.5, 0.4, 0.3]}})
    ax = fig.axes[0]
    assert "1" in _labels(ax).values()
    assert any(line.get_linestyle() == ":" for line in ax.get_lines())  # the 0-step (clean) accuracy
    plots.plt.close(fig)


def test_heatmap_has_one_fixed_scale_and_label_colour_by_luminance():
    fig = plots.heatmap(["I-FGSM from a", "DI²-FGSM from a"], ["a", "b"], [[0.0, 100.0], [50.0, None]])
    ax = fig.axes[0]
    (im,) = ax.get_images()
    assert im.get_clim() == (0.0, 100.0)
    colours = {t.get_text(): mcolors.to_hex(t.get_color()) for t in ax.texts}
    assert colours == {"0.0": "#ffffff", "100.0": "#000000", "50.0": "#000000"}  # dark purple / yellow / teal
    assert plots.label_colour((0.0, 0.0, 0.5)) == "white" and plots.label_colour((0.9, 0.9, 0.2)) == "black"
    plots.plt.close(fig)


def test_corruption_curves_one_line_per_model_per_panel():
    errors = {m: {c: {"1": 0.1 * k, "3": 0.2 * k, "5": 0.3 * k} for c in ("fog", "snow")} for k, m in
              enumerate(("a", "b", "c"), 1)}
    fig = plots.corruption_curves(errors, {"a": 0.9, "b": 0.8, "c": 0.7})
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["mean over corruptions", "fog", "snow"]
    for ax in panels:
        assert len(ax.get_lines()) == 3
        assert [t.get_text() for t in ax.get_xticklabels()] == ["clean", "1", "3", "5"]
    mean = panels[0].get_lines()[1].get_ydata()
    assert list(mean) == pytest.approx([80.0, 80.0, 60.0, 40.0])  # b: clean 0.8, then 1 - 0.2·severity/…
    plots.plt.close(fig)


def test_dag_pictures_show_each_image_with_its_predictions_and_boxes_take_class_colours():
    import torch

    from robustlab.data.scenes import make_scenes
    from robustlab.models.dense import create_dense

    torch.manual_seed(0)
    scenes = make_scenes(2, source="shapes", size=32, max_objects=2, split="test", seed=0)
    x, r = scenes.images, torch.zeros_like(scenes.images)
    fig = plots.dag_pictures("segmentation", create_dense("segmentation", scenes.num_classes, 2).eval(), x, r,
                             scenes, 2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 12 and titles[:6] == ["clean", "perturbation ×10", "adversarial", "ground truth",
                                                "prediction (clean)", "prediction (adversarial)"]
    plots.plt.close(fig)
    assert plots.dag_pictures("segmentation", None, x[:0], r[:0], scenes, 3) is None
    img = torch.zeros(3, 16, 16)
    drawn = plots.with_boxes(img, {"boxes": torch.tensor([[2.0, 2.0, 10.0, 10.0]]), "labels": torch.tensor([2])})
    assert torch.allclose(drawn[:, 2, 5], plots.PALETTE[2], atol=1 / 255) and float(drawn[:, 5, 5].sum()) == 0
    faint = {"boxes": torch.tensor([[2.0, 2.0, 10.0, 10.0]]), "labels": torch.tensor([2]),
             "scores": torch.tensor([0.1])}
    assert float(plots.with_boxes(img, faint).sum()) == 0  # below the score threshold: not drawn


def test_active_targets_average_per_iteration_and_hold_an_early_stop():
    fig = plots.active_targets({"a": [[10, 5, 0], [4, 2]]})
    (line,) = fig.axes[0].get_lines()
    # iteration 2: 0/10 for the first image, 2/4 held by the second (it stopped after iteration 1)
    assert list(line.get_ydata()) == pytest.approx([100.0, 50.0, 25.0])
    plots.plt.close(fig)


def test_batch_vs_running_draws_both_statistics_per_panel():
    stats = {"images": "adversarial", "batch_mean": [0.1, 0.3], "batch_var": [1, 1], "running_mean": [0.2, 0.2],
             "running_var": [1.1, 0.9]}
    fig = plots.batch_vs_running(stats, "layer1", "adv")
    assert [ax.get_title() for ax in fig.axes] == ["mean — layer1 [adv]", "var — layer1 [adv]"]
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["running", "batch (adversarial)"]
    plots.plt.close(fig)
