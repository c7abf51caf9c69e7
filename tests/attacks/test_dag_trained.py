"""DAG on trained dense models (Table 2.1's direction on the built-in scenes):
the adversarial perturbation destroys the segmentation; the same values with
rows and columns permuted leave it almost untouched."""
from __future__ import annotations

import pytest
import torch

from robustlab.attacks import dag_segmentation
from robustlab.data.scenes import make_scenes
from robustlab.eval.dense import segmentation_report
from robustlab.models.dense import SmallFCN
from robustlab.train.dense import train_segmenter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def segmenter():
    kw = {"source": "shapes", "size": 32, "max_objects": 2, "object_size": (12, 18), "seed": 0}
    train = make_scenes(600, split="train", **kw)
    test = make_scenes(6, split="test", **kw)
    torch.manual_seed(0)
    fit = train_segmenter(SmallFCN(3, train.num_classes, 8), train, epochs=4, batch_size=16, lr=1e-2, seed=0)
    return fit.model, test, train.num_classes


def test_dag_destroys_the_segmentation_and_the_permuted_perturbation_does_not(segmenter):
    model, test, k = segmenter
    res = dag_segmentation(model, test.images, test.masks)  # the thesis's γ = 0.5 and 200 iterations
    rep = segmentation_report(model, test.images, test.masks, res.perturbation, k)
    assert rep["orig"] > 0.35  # the segmenter works
    assert rep["adv"] < 0.6 * rep["orig"]
    assert abs(rep["perm"] - rep["orig"]) < 0.03  # Table 2.1: the structure of r matters, not its values
    counts = torch.tensor([c[-1] for c in res.active], dtype=torch.float)
    assert bool((counts < torch.tensor([c[0] for c in res.active], dtype=torch.float)).all())
    assert float(res.perturbation.abs().amax()) <= 200 * 0.5 / 255 + 1e-6  # at most M_0 steps of γ


def test_targeted_dag_paints_a_square_into_the_prediction(segmenter):
    from robustlab.eval.dense import segment

    model, test, _ = segmenter
    x = test.images[:1]
    target = torch.zeros(1, 32, 32, dtype=torch.long)
    target[:, 8:24, 8:24] = 1
    inside = target == 1
    before = float((segment(model, x)[inside] == 1).float().mean())
    res = dag_segmentation(model, x, target=target, max_iter=500)  # a whole new region needs more than 200
    pred = segment(model, res.x_adv)
    after = float((pred[inside] == 1).float().mean())
    assert before < 0.5 and after > 0.8, (before, after)  # the square is painted in
    assert float((pred == target).float().mean()) > 0.75
