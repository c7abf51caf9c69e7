"""Dense Adversary Generation (Algorithm 1) on a small segmenter."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.attacks.dag import GAMMA, dag_segmentation, dag_single, derangement, normalized_step

# An untrained segmenter is far less sensitive to its input than a trained one, so the tests
# take γ = 0.01 (2.55 on the 0-255 scale) instead of 0.5/255; the algorithm is the same.
G = 0.01


def segmenter(classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, classes, 1)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(4)
    return m


@pytest.fixture()
def images():
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_derangement_has_no_fixed_point():
    gen = torch.Generator().manual_seed(0)
    for c in (2, 3, 5, 21):
        for _ in range(50):
            p = derangement(c, gen)
            assert sorted(p.tolist()) == list(range(c)) and not bool((p == torch.arange(c)).any())
    with pytest.raises(ValueError, match="2 classes"):
        derangement(1)


def test_normalized_step_has_linf_gamma():
    r = torch.randn(3, 3, 8, 8) * torch.tensor([1e-6, 1.0, 1e3]).view(3, 1, 1, 1)
    step = normalized_step(r)
    torch.testing.assert_close(step.flatten(1).abs().amax(1), torch.full((3,), GAMMA))
    assert torch.equal(normalized_step(torch.zeros(1, 3, 2, 2)), torch.zeros(1, 3, 2, 2))


def test_dag_fools_the_pixels_and_follows_algorithm_1(images):
    model = segmenter()
    res = dag_segmentation(model, images, gamma=G)
    clean = model(images).argmax(1)
    adv = model(images + res.perturbation).argmax(1)  # the algorithm's last iterate (before Trunc)
    for i, counts in enumerate(res.active):
        assert counts[0] == clean[i].numel()  # labels default to the clean prediction: all active
        assert counts[-1] == 0 and res.iterations[i] == len(counts) - 1 < 200
    assert not bool((adv == clean).any())
    assert torch.equal(res.x_adv, (images + res.perturbation).clamp(0, 1))
    # r is a sum of steps of L∞ norm γ each.
    for i in range(2):
        assert float(res.perturbation[i].abs().max()) <= res.iterations[i] * G + 1e-6


def test_active_counts_are_recomputed_over_all_targets(images):
    """T_m = {t : argmax f(X_m, t) = l}, recomputed each iteration (a target may return)."""
    model = segmenter()
    x = images[:1]
    labels = model(x).argmax(1).flatten()
    adv = derangement(5, torch.Generator().manual_seed(0))[labels]
    f = lambda xm: model(xm)[0].flatten(1).t()  # noqa: E731
    seen = []
    r, counts = dag_single(lambda xm: (seen.append(xm.detach().clone()), f(xm))[1], x, labels, adv, max_iter=5)
    for xm, c in zip(seen, counts):
        assert c == int((f(xm).argmax(1) == labels).sum())


def test_targeted_dag_paints_a_shape(images):
    model = segmenter()
    target = model(images).argmax(1).clone()
    target[:, 2:6, 2:6] = 3  # a square of class 3
    res = dag_segmentation(model, images, target=target, gamma=G)
    pred = model(images + res.perturbation).argmax(1)
    assert bool((pred == target).all()) and all(c[-1] == 0 for c in res.active)


def test_background_is_left_alone_when_asked(images):
    model = segmenter()
    labels = model(images).argmax(1)
    res = dag_segmentation(model, images, ignore_background=True, background=int(labels.flatten().mode().values),
                           max_iter=2)
    assert all(c[0] < labels[i].numel() for i, c in enumerate(res.active))


def test_a_fooling_image_targets_every_pixel_background_included(images):
    """§2.3.4: the target map is painted everywhere, whatever ignore_background
    says (it concerns the untargeted attack): the ch. 2 study once painted only
    the pixels that already were objects (16 of 256 in the audit)."""
    model = segmenter()
    labels = model(images).argmax(1)
    background = int(labels.flatten().mode().values)
    target = torch.full_like(labels, (background + 1) % 5)  # every pixel, including the background ones
    target[:, 2:6, 2:6] = (background + 2) % 5
    res = dag_segmentation(model, images, labels=torch.full_like(labels, background), target=target,
                           ignore_background=True, background=background, gamma=G)
    first = [c[0] for c in res.active]
    assert first == [int((labels[i] != target[i]).sum()) for i in range(len(labels))]  # every mismatching pixel
    assert all(n > 0 for n in first)
    pred = model(images + res.perturbation).argmax(1)
    on_background = labels == background
    assert float((pred == target)[on_background].float().mean()) > 0.5  # painted where nothing was an object
    assert float((pred == target).float().mean()) > float((labels == target).float().mean()) + 0.4


def test_dict_output_and_bad_input(images):
    class Dict(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = segmenter()

        def forward(self, x):
            return {"out": self.net(x)}

    res = dag_segmentation(Dict().eval(), images, max_iter=3)
    assert res.perturbation.shape == images.shape
    with pytest.raises(ValueError, match="label map"):
        dag_segmentation(segmenter(), images, labels=torch.zeros(2, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="classes in"):
        dag_segmentation(segmenter(), images, labels=torch.full((2, 8, 8), 7))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dag_segmentation(segmenter(), images * 3)
