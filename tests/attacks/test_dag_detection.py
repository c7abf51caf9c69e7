"""DAG on a two-stage detector (§2.3.2): dense proposals, the selection rule, Algorithm 1 over them."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dense_helpers import tiny_faster_rcnn
from torch import nn
from torchvision.models.detection import FasterRCNN

import robustlab.attacks.detection as dag_module
from robustlab.attacks import dag_detection, dense_proposals, proposal_logits, rpn_settings, select_targets

CANVAS = 32
# An untrained detector is far less sensitive to its input than a trained one, so the tests take a larger
# step than the thesis's γ = 0.5/255; the algorithm is the same.
G = 0.1


def detector(num_classes: int = 4, size: int = CANVAS) -> FasterRCNN:
    """A tiny Faster R-CNN (random weights); ``size`` ≠ CANVAS makes its transform resize the images."""
    return tiny_faster_rcnn(num_classes, size)


@pytest.fixture()
def scene():
    x = torch.rand(2, 3, CANVAS, CANVAS, generator=torch.Generator().manual_seed(1))
    boxes = [torch.tensor([[2.0, 3, 15, 20], [15, 15, 30, 25]]), torch.tensor([[5.0, 5, 25, 25]])]
    labels = [torch.tensor([1, 2]), torch.tensor([3])]
    return x, boxes, labels


def rpn_state(rpn):
    return rpn.nms_thresh, dict(rpn._pre_nms_top_n), dict(rpn._post_nms_top_n)


def test_dense_proposals_grow_with_the_nms_iou_and_are_the_rpns(scene):
    x = scene[0]
    model = detector(size=48)  # the transform resizes 32 → 48: proposals come back in x's pixels
    before = rpn_state(model.rpn)
    dense, sparse = dense_proposals(model, x, 0.9), dense_proposals(model, x, 0.7)
    assert rpn_state(model.rpn) == before
    for d, s in zip(dense, sparse):
        assert len(d) > len(s) > 0
        assert float(d.min()) >= 0 and float(d.max()) <= CANVAS
    assert [len(p) for p in dense_proposals(model, x, 0.9, post_nms_top_n=50)] == [50, 50]
    # At the model's own settings they are exactly its RPN's proposals, scaled back by 32/48.
    with torch.no_grad():
        images, _ = model.transform(list(x))
        own, _ = model.rpn(images, {"0": model.backbone(images.tensors)})
    same = dense_proposals(model, x, before[0], pre_nms_top_n=before[1]["testing"],
                           post_nms_top_n=before[2]["testing"])
    for a, b in zip(same, own):
        torch.testing.assert_close(a, b * CANVAS / 48)


def test_rpn_settings_restore_on_error():
    rpn = detector().rpn
    before, pre_dict = rpn_state(rpn), rpn._pre_nms_top_n
    with pytest.raises(RuntimeError, match="boom"), rpn_settings(rpn, 0.9, 5, 7):
        assert rpn.nms_thresh == 0.9 and rpn._pre_nms_top_n["testing"] == 5 and rpn._post_nms_top_n["testing"] == 7
        assert pre_dict["testing"] != 5  # the model's own dict is never mutated
        raise RuntimeError("boom")
    assert rpn_state(rpn) == before and rpn._pre_nms_top_n is pre_dict


def test_selection_rule_against_a_hand_computation():
    # GT A = [0,0,10,10] class 1, GT B = [5,0,15,10] class 2: IoU(A, B) = 50 / 150 = 1/3.
    boxes, labels = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10]]), torch.tensor([1, 2])
    proposals = torch.tensor([[0.0, 0, 10, 10],   # both qualify: A has the larger IoU → 1
                              [0, 0, 10, 10],     # A's class scores 0.05: B still qualifies (IoU 1/3) → 2
                              [20, 20, 30, 30],   # no overlap → background
                              [9, 0, 19, 10],     # IoU A = 10/190 < 0.1, IoU B = 60/140, score 0.11 → 2
                              [5, 0, 15, 10],     # B's score is exactly 0.1 (not > 0.1); A: IoU 1/3 → 1
                              [9, 0, 19, 10]])    # as row 3 but B's score 0.09 → background
    probs = torch.tensor([[0.2, 0.5, 0.3, 0.0],
                          [0.65, 0.05, 0.3, 0.0],
                          [0.1, 0.45, 0.45, 0.0],
                          [0.1, 0.79, 0.11, 0.0],
                          [0.1, 0.5, 0.1, 0.3],
                          [0.1, 0.81, 0.09, 0.0]])
    lab, mask = select_targets(proposals, probs, boxes, labels)
    assert lab.tolist() == [1, 2, 0, 2, 1, 0] and mask.tolist() == [True, True, False, True, True, False]
    lab, mask = select_targets(proposals, probs, boxes, labels, select_iou=0.5)  # only IoU(row 0, A) = 1 is left
    assert lab.tolist() == [1, 0, 0, 0, 0, 0]
    lab, mask = select_targets(proposals, probs, boxes[:0], labels[:0])
    assert lab.tolist() == [0] * 6 and not bool(mask.any())


def recorder(model):
    """Record every image given to the transform and every proposal set given to the box RoI pool."""
    seen = {"images": [], "proposals": []}
    h1 = model.transform.register_forward_pre_hook(lambda m, a: seen["images"].append(a[0][0].detach().clone()))
    h2 = model.roi_heads.box_roi_pool.register_forward_pre_hook(
        lambda m, a: seen["proposals"].append(a[1][0].detach().clone()))
    return seen, (h1, h2)


def capture_dag_single(monkeypatch):
    calls = []
    real = dag_module.dag_single

    def spy(f, x, labels, adv_labels, **kw):
        calls.append({"labels": labels, "adv": adv_labels, "mask": kw["mask"]})
        return real(f, x, labels, adv_labels, **kw)

    monkeypatch.setattr(dag_module, "dag_single", spy)
    return calls


def test_attack_follows_algorithm_1_on_fixed_dense_proposals(scene, monkeypatch):
    x, boxes, labels = scene
    x, boxes, labels = x[:1], boxes[:1], labels[:1]
    model = detector(size=48)  # resizing transform: GT boxes must be scaled like the proposals
    calls = capture_dag_single(monkeypatch)
    seen, hooks = recorder(model)
    res = dag_detection(model, x, boxes, labels, gamma=G)
    for h in hooks:
        h.remove()
    # The proposals are computed once from the clean image and used, unchanged, at every iteration.
    dense = dense_proposals(model, x)[0]
    torch.testing.assert_close(seen["proposals"][0] * CANVAS / 48, dense)
    # The targets are the positive proposals of §2.3.2, selected in x's own coordinates by hand here.
    probs = proposal_logits(model, x, dense).softmax(1)
    lab, mask = select_targets(dense, probs, boxes[0], labels[0])
    assert 0 < int(mask.sum()) < len(dense)
    assert torch.equal(calls[0]["mask"], mask) and torch.equal(calls[0]["labels"], lab)
    # The clean pass scores every dense proposal; the iterations only the positive ones (the same ones each time).
    assert len(seen["proposals"]) >= 3 and all(torch.equal(p, seen["proposals"][1]) for p in seen["proposals"][1:])
    torch.testing.assert_close(seen["proposals"][1], seen["proposals"][0][mask])
    # l' = π(l), π a derangement of the object classes (one l' per l, never l, never the background).
    adv = calls[0]["adv"][mask]
    assert bool((adv != lab[mask]).all()) and bool((adv >= 1).all())
    assert all(len(set(adv[lab[mask] == c].tolist())) == 1 for c in lab[mask].unique().tolist())
    # Iterates: X_0 = X (two clean passes: proposals, then their scores), X_{m+1} = X_m + r'_m, ‖r'_m‖∞ = γ.
    iterates = [im[None] for im in seen["images"][2:]]
    torch.testing.assert_close(iterates[0], x)
    for a, b in zip(iterates, iterates[1:]):
        assert float((b - a).abs().max()) == pytest.approx(G, rel=1e-4)
    counts = res.active[0]
    assert len(iterates) == len(counts) == res.iterations[0] + 1
    torch.testing.assert_close(iterates[-1], x + res.perturbation)
    # |T_m| recomputed over all targets at every X_m; the loop stops at the first empty T_m.
    for xm, c in zip(iterates, counts):
        pred = proposal_logits(model, xm, dense).argmax(1)
        assert c == int(((pred == lab) & mask).sum())
    assert all(c > 0 for c in counts[:-1]) and counts[-1] == 0 and res.iterations[0] < 150
    assert torch.equal(res.x_adv, (x + res.perturbation).clamp(0, 1))


def test_scoring_only_the_positive_proposals_is_the_same_attack(scene, monkeypatch):
    """Algorithm 1 over every dense proposal (the unmasked ones never active) gives the same r."""
    x, boxes, labels = scene
    model = detector(size=48)
    fast = dag_detection(model, x, boxes, labels, gamma=G, max_iter=4)
    monkeypatch.setattr(dag_module, "_positive_logits", lambda m, p, mask: lambda xm: dag_module._classify(m, xm, p))
    full = dag_detection(model, x, boxes, labels, gamma=G, max_iter=4)
    assert fast.active == full.active and fast.iterations == full.iterations
    torch.testing.assert_close(fast.perturbation, full.perturbation, rtol=1e-5, atol=1e-6)


def test_gradient_reaches_the_pixels_through_the_transform():
    model = detector(size=24).double()  # normalize, bilinear resize 16 → 24, zero-pad to 32
    x = torch.rand(1, 3, 16, 16, dtype=torch.double, generator=torch.Generator().manual_seed(2), requires_grad=True)
    props = torch.tensor([[1.0, 2, 9, 12], [4, 4, 15, 15], [0, 0, 16, 16]], dtype=torch.double)
    assert torch.autograd.gradcheck(lambda v: proposal_logits(model, v, props), (x,), eps=1e-6, atol=1e-6,
                                    fast_mode=True)
    # The same logits by hand: the proposals are scaled by 24/16 into the resized image.
    t = model.transform
    mean, std = torch.tensor(t.image_mean, dtype=x.dtype), torch.tensor(t.image_std, dtype=x.dtype)
    z = F.interpolate((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1), size=(24, 24), mode="bilinear",
                      align_corners=False)
    z = F.pad(z, (0, 8, 0, 8))
    rh = model.roi_heads
    want = rh.box_predictor(rh.box_head(rh.box_roi_pool({"0": model.backbone(z)}, [props * 1.5], [(24, 24)])))[0]
    torch.testing.assert_close(proposal_logits(model, x, props), want)
    unscaled = rh.box_predictor(rh.box_head(rh.box_roi_pool({"0": model.backbone(z)}, [props], [(24, 24)])))[0]
    assert not torch.allclose(unscaled, want)


def test_the_model_is_left_as_it_was_found(scene, monkeypatch):
    x, boxes, labels = scene
    model = detector().train()
    model.roi_heads.eval()  # a mixed train/eval state must come back as it was
    flags = [m.training for m in model.modules()]
    params = {k: v.clone() for k, v in model.state_dict().items()}
    rpn = rpn_state(model.rpn)
    res = dag_detection(model, x, boxes, labels, gamma=G, max_iter=3)
    assert res.perturbation.shape == x.shape and all(len(c) <= 4 for c in res.active)
    assert [m.training for m in model.modules()] == flags and rpn_state(model.rpn) == rpn
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    # ... also when the attack fails half-way.
    monkeypatch.setattr(dag_module, "dag_single", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        dag_detection(model, x, boxes, labels)
    assert [m.training for m in model.modules()] == flags and rpn_state(model.rpn) == rpn


def test_seeded_and_denser_targets_with_a_higher_nms_iou(scene, monkeypatch):
    x, boxes, labels = scene
    model = detector()
    calls = capture_dag_single(monkeypatch)
    a = dag_detection(model, x, boxes, labels, gamma=G, max_iter=2)
    b = dag_detection(model, x, boxes, labels, gamma=G, max_iter=2)
    c = dag_detection(model, x, boxes, labels, 0.7, gamma=G, max_iter=2)
    assert torch.equal(a.perturbation, b.perturbation) and a.active == b.active
    # Fig. 2.3's knob: the sparse (0.7) proposal set gives fewer targets than the dense (0.9) one.
    for dense, sparse in zip(calls[:2], calls[4:]):
        assert int(sparse["mask"].sum()) < int(dense["mask"].sum())
    assert c.active != a.active


def test_an_image_without_objects_is_left_alone(scene):
    x, boxes, labels = scene
    res = dag_detection(detector(), x, [boxes[0], boxes[1][:0]], [labels[0], labels[1][:0]], gamma=G, max_iter=2)
    assert res.active[1] == [0] and res.iterations[1] == 0 and not bool(res.perturbation[1].any())
    assert bool(res.perturbation[0].any())


@pytest.mark.parametrize("change, match", [
    (lambda x, b, lab: (x * 3, b, lab), r"x must lie in \[0, 1\]"),
    (lambda x, b, lab: (x, b[0], lab), "boxes must be a list of 2"),
    (lambda x, b, lab: (x, b, lab[:1]), "labels must be a list of 2"),
    (lambda x, b, lab: (x, [b[0][:, :3], b[1]], lab), r"boxes\[0\] must be a float tensor \(K, 4\)"),
    (lambda x, b, lab: (x, [b[0], b[1] + 10], lab), r"boxes\[1\] .* inside the 32×32 image"),
    (lambda x, b, lab: (x, [b[0][:, [2, 1, 0, 3]], b[1]], lab), r"boxes\[0\] .* x1 < x2"),
    (lambda x, b, lab: (x, b, [lab[0].float(), lab[1]]), r"labels\[0\] must be an integer tensor \(2,\)"),
    (lambda x, b, lab: (x, b, [lab[0][:1], lab[1]]), r"labels\[0\] must be an integer tensor \(2,\)"),
    (lambda x, b, lab: (x, b, [lab[0], lab[1] * 0]), r"labels\[1\] .* \[1, 3\] \(0 is the background\)"),
    (lambda x, b, lab: (x, b, [lab[0] + 3, lab[1]]), r"labels\[0\] .* \[1, 3\]"),
])
def test_bad_input_names_the_argument(scene, change, match):
    with pytest.raises((TypeError, ValueError), match=match):
        dag_detection(detector(), *change(*scene))


def test_bad_settings_and_models(scene):
    with pytest.raises(ValueError, match="nms_iou"):
        dag_detection(detector(), *scene, nms_iou=1.5)
    with pytest.raises(ValueError, match="score_thresh"):
        dag_detection(detector(), *scene, score_thresh=-0.1)
    with pytest.raises(ValueError, match="post_nms_top_n"):
        dag_detection(detector(), *scene, post_nms_top_n=0)
    with pytest.raises(TypeError, match="two-stage detector"):
        dag_detection(nn.Conv2d(3, 4, 1), *scene)
    with pytest.raises(ValueError, match="at least 2 object classes"):
        dag_detection(detector(num_classes=2), scene[0], scene[1], [torch.ones(len(b), dtype=torch.long)
                                                                    for b in scene[1]])
