"""DAG on object detectors (thesis §2.3.2): the targets of Algorithm 1 are
dense proposals of a torchvision two-stage detector (Faster R-CNN).

The RPN runs once on the clean image with its NMS IoU raised to 0.9 and
~3000 proposals kept; the proposal set stays fixed. A proposal is a target
when its IoU with a ground-truth box exceeds 0.1 and its score for that
box's class exceeds 0.1 (the largest IoU wins among qualifying boxes); its
label is that class, its adversarial label π(label) with π a derangement of
the object classes (background fixed). The NMS IoU is the knob of Fig. 2.3.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from robustlab._checks import check_images, check_number
from robustlab._progress import progress as progress_bar
from robustlab.attacks.dag import DETECTION_ITERS, GAMMA, DAGResult, dag_single, derangement
from robustlab.nn.state import inference_state

DENSE_NMS_IOU, SPARSE_NMS_IOU = 0.9, 0.7  # §2.3.2 / Fig. 2.3: RPN NMS IoU 0.9 (dense) vs 0.7 (the usual, sparse)
DENSE_PROPOSALS = 3000  # post-NMS proposals kept per image: "~3000" at NMS 0.9 on VOC-size (~600 px) images
PRE_NMS_PROPOSALS = 6000  # pre-NMS candidates per FPN level (py-faster-rcnn's test setting), enough to fill 3000


def check_detector(model: nn.Module) -> None:
    """Raise unless ``model`` has the parts of a torchvision GeneralizedRCNN that DAG drives."""
    if not all(hasattr(model, a) for a in ("transform", "backbone", "rpn", "roi_heads")):
        raise TypeError("model must be a torchvision two-stage detector (GeneralizedRCNN, e.g. FasterRCNN) with "
                        f"transform, backbone, rpn and roi_heads; got {type(model).__name__}")


def _num_classes(model: nn.Module) -> int | None:
    cls_score = getattr(model.roi_heads.box_predictor, "cls_score", None)  # torchvision's FastRCNNPredictor
    return cls_score.out_features if isinstance(cls_score, nn.Linear) else None


def check_detection_targets(x: Tensor, boxes: object, labels: object, num_classes: int | None = None) -> None:
    """Ground truth of a batch ``x`` (N, C, H, W): ``boxes`` a list of N float
    (K_i, 4) xyxy boxes of positive area inside the image (input pixels),
    ``labels`` a list of N integer (K_i,) classes in [1, num_classes − 1]
    (0 is the background)."""
    n, (h, w) = x.shape[0], x.shape[-2:]
    for name, seq in (("boxes", boxes), ("labels", labels)):
        if not isinstance(seq, (list, tuple)) or len(seq) != n:
            raise TypeError(f"{name} must be a list of {n} tensors, one per image of x; got "
                            f"{f'{len(seq)} items' if isinstance(seq, (list, tuple)) else type(seq).__name__}")
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        if not isinstance(b, Tensor) or not b.is_floating_point() or b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must be a float tensor (K, 4) of xyxy boxes; got "
                             f"{tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__}"
                             f"{f' {b.dtype}' if isinstance(b, Tensor) else ''}")
        if not isinstance(lab, Tensor) or lab.is_floating_point() or lab.dtype == torch.bool or lab.shape != (len(b),):
            raise ValueError(f"labels[{i}] must be an integer tensor ({len(b)},), one class per box; got "
                             f"{f'{tuple(lab.shape)} {lab.dtype}' if isinstance(lab, Tensor) else type(lab).__name__}")
        if not len(b):
            continue
        inside = (b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= w) & (b[:, 3] <= h)
        if not bool((torch.isfinite(b).all(1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) & inside).all()):
            raise ValueError(f"boxes[{i}] must hold finite xyxy boxes with x1 < x2, y1 < y2 inside the {w}×{h} image")
        high = num_classes - 1 if num_classes is not None else None
        if int(lab.min()) < 1 or (high is not None and int(lab.max()) > high):
            raise ValueError(f"labels[{i}] must hold object classes in [1, {high if high is not None else 'C − 1'}] "
                             f"(0 is the background); got values in [{int(lab.min())}, {int(lab.max())}]")


@contextlib.contextmanager
def rpn_settings(rpn: nn.Module, nms_iou: float, pre_nms_top_n: int, post_nms_top_n: int) -> Iterator[None]:
    """Temporarily give a torchvision RPN the NMS IoU and the test-time
    pre-NMS (per FPN level) and post-NMS proposal counts; always restored."""
    saved = rpn.nms_thresh, rpn._pre_nms_top_n, rpn._post_nms_top_n
    rpn.nms_thresh = nms_iou
    rpn._pre_nms_top_n = {**saved[1], "testing": pre_nms_top_n}  # new dicts: the model's own are never mutated
    rpn._post_nms_top_n = {**saved[2], "testing": post_nms_top_n}
    try:
        yield
    finally:
        rpn.nms_thresh, rpn._pre_nms_top_n, rpn._post_nms_top_n = saved


def _scale_boxes(boxes: Tensor, size: list[int], new_size: list[int]) -> Tensor:
    """xyxy boxes from an (h, w) image to an (h', w') one (torchvision's resize_boxes)."""
    (h, w), (h2, w2) = size, new_size
    return boxes * boxes.new_tensor([w2 / w, h2 / h, w2 / w, h2 / h])


def _features(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    feats = model.backbone(images)
    return OrderedDict([("0", feats)]) if isinstance(feats, Tensor) else feats


def _classify(model: nn.Module, x: Tensor, proposals: Tensor) -> Tensor:
    """Box-head class logits (P, num_classes) of proposals in the detector's
    own (transformed) coordinates, for images x (1, C, H, W) in [0, 1]. The
    transform (normalize, bilinear resize, zero pad) is differentiable, so the
    gradient reaches the pixels of x."""
    images, _ = model.transform(list(x))
    rh = model.roi_heads
    pooled = rh.box_roi_pool(_features(model, images.tensors), [proposals], images.image_sizes)
    return rh.box_predictor(rh.box_head(pooled))[0]


@torch.no_grad()
def _rpn_proposals(model: nn.Module, x: Tensor, nms_iou: float, pre: int, post: int) -> tuple[Tensor, list[int]]:
    """Proposals of one image (1, C, H, W) in transformed coordinates, and the transformed size (h, w)."""
    images, _ = model.transform(list(x))
    with rpn_settings(model.rpn, nms_iou, pre, post):
        proposals, _ = model.rpn(images, _features(model, images.tensors))
    return proposals[0], list(images.image_sizes[0])


def dense_proposals(model: nn.Module, x: Tensor, nms_iou: float = DENSE_NMS_IOU, *,
                    pre_nms_top_n: int = PRE_NMS_PROPOSALS, post_nms_top_n: int = DENSE_PROPOSALS) -> list[Tensor]:
    """The RPN proposals DAG attacks (§2.3.2): one (P_i, 4) xyxy tensor per
    image of x (N, C, H, W), in x's pixel coordinates. A higher ``nms_iou``
    filters fewer boxes: ~300 at 0.7, ~3000 at 0.9 on VOC images (Fig. 2.3)."""
    check_images(x, "x")
    check_detector(model)
    out = []
    with inference_state(model):
        for i in range(x.shape[0]):
            p, size = _rpn_proposals(model, x[i: i + 1], nms_iou, pre_nms_top_n, post_nms_top_n)
            out.append(_scale_boxes(p, size, list(x.shape[-2:])))
    return out


def proposal_logits(model: nn.Module, x: Tensor, proposals: Tensor) -> Tensor:
    """f(X, t_n) of §2.3.1 for detection: the box head's class logits
    (P, num_classes, background = 0) of ``proposals`` (P, 4) xyxy in the pixel
    coordinates of the one image x (1, C, H, W); differentiable in x."""
    check_detector(model)
    with inference_state(model):
        size = model.transform(list(x.detach()))[0].image_sizes[0]
        return _classify(model, x, _scale_boxes(proposals, list(x.shape[-2:]), list(size)))


def select_targets(proposals: Tensor, probs: Tensor, boxes: Tensor, labels: Tensor, *, select_iou: float = 0.1,
                   score_thresh: float = 0.1) -> tuple[Tensor, Tensor]:
    """The positive proposals of §2.3.2: proposal p takes ground-truth object
    g if IoU(p, g) > ``select_iou`` and p's softmax score for g's class >
    ``score_thresh``; when several objects qualify, the one of largest IoU
    (as the release's assign_target_det). Returns (labels (P,), mask (P,)):
    the chosen object's class, 0 (background) where none qualifies.

    ``proposals`` (P, 4) and ``boxes`` (K, 4) xyxy in the same coordinates;
    ``probs`` (P, num_classes) the clean image's class probabilities."""
    from torchvision.ops import box_iou  # torchvision on first use: importing it costs seconds

    if not len(boxes):
        zero = torch.zeros(len(proposals), dtype=torch.long, device=proposals.device)
        return zero, zero.bool()
    iou = box_iou(boxes, proposals)  # (K, P)
    ok = (iou > select_iou) & (probs[:, labels].t() > score_thresh)
    best = torch.where(ok, iou, torch.full_like(iou, -1.0)).argmax(0)
    mask = ok.any(0)
    return torch.where(mask, labels.to(best.device)[best], torch.zeros_like(best)), mask


def _positive_logits(model: nn.Module, proposals: Tensor, mask: Tensor) -> Callable[[Tensor], Tensor]:
    """f(X_m, t_n) for every proposal, computed for the positive ones only.

    The other proposals are never targets (Algorithm 1 masks them out of T_m
    and of the gain), and a proposal's logits depend on its own box alone
    (RoIAlign and the box head work per RoI), so their rows are left at 0:
    the same attack at a fraction of the cost — on a CPU a 64×64 scene has
    ~2500 dense proposals and ~50 positive ones, 25× less time per step."""
    keep = mask.nonzero().squeeze(1)
    positives = proposals[keep]

    def f(xm: Tensor) -> Tensor:
        z = _classify(model, xm, positives)
        return z.new_zeros(len(proposals), z.shape[1]).index_copy(0, keep, z)

    return f


def dag_detection(
    model: nn.Module,
    x: Tensor,
    boxes: list[Tensor],
    labels: list[Tensor],
    nms_iou: float = DENSE_NMS_IOU,
    *,
    score_thresh: float = 0.1,
    select_iou: float = 0.1,
    post_nms_top_n: int = DENSE_PROPOSALS,
    pre_nms_top_n: int = PRE_NMS_PROPOSALS,
    gamma: float = GAMMA,
    max_iter: int = DETECTION_ITERS,
    stop_fraction: float = 0.0,
    seed: int | None = 0,
    progress: bool = False,
) -> DAGResult:
    """DAG on a torchvision two-stage detector (FasterRCNN / GeneralizedRCNN), §2.3.2.

    The targets are dense RPN proposals of the *clean* image (NMS IoU raised to
    ``nms_iou``, up to ``post_nms_top_n`` per image, ~3000 on VOC-size images),
    kept fixed through the attack; of them, the positive proposals of
    :func:`select_targets` are attacked with Algorithm 1 on the box head's
    class logits, for at most ``max_iter`` = 150 iterations.

    Adversarial labels l' = π(l): π a random derangement of the object classes
    1..C−1 per image, the background fixed (it is never a target's label: the
    release maps background to itself and attacks object proposals only).
    The RPN's settings, the modules' train/eval flags and the parameters
    (values and ``.grad``) are left as they were found.

    Args:
        model: a FasterRCNN-like model with ``transform``, ``backbone``, ``rpn``,
            ``roi_heads``; class 0 is the background (at least 2 object classes).
        x: (N, C, H, W) images in [0, 1]; the model's own transform resizes them.
        boxes: N float tensors (K_i, 4), ground-truth xyxy boxes in x's pixels.
        labels: N integer tensors (K_i,), their classes in [1, C − 1].
        nms_iou: the RPN's NMS IoU for the proposals (Fig. 2.3's knob).
        pre_nms_top_n: pre-NMS candidates per FPN level.
        stop_fraction: stop once at most this fraction of the targets is active.
        progress: report the images attacked (:mod:`robustlab._progress`).
    Returns:
        DAGResult; ``active`` counts the active positive proposals.
    """
    check_images(x, "x")
    check_detector(model)
    num_classes = _num_classes(model)
    check_detection_targets(x, boxes, labels, num_classes)
    check_number(nms_iou, "nms_iou", low=0.0, high=1.0, low_open=True)
    for name, v in (("score_thresh", score_thresh), ("select_iou", select_iou), ("stop_fraction", stop_fraction)):
        check_number(v, name, low=0.0, high=1.0, high_open=True)
    pre, post = (int(check_number(v, n, low=1, integer=True))
                 for n, v in (("pre_nms_top_n", pre_nms_top_n), ("post_nms_top_n", post_nms_top_n)))
    max_iter = int(check_number(max_iter, "max_iter", low=0, integer=True))
    check_number(gamma, "gamma", low=0.0, low_open=True)
    if num_classes is not None and num_classes < 3:
        raise ValueError(f"DAG needs at least 2 object classes besides the background; the model has {num_classes}")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    rs, counts = [], []
    with inference_state(model), progress_bar(x.shape[0], "DAG detection", "image", enabled=progress) as bar:
        for i in range(x.shape[0]):
            xi = x[i: i + 1]
            proposals, size = _rpn_proposals(model, xi, nms_iou, pre, post)  # fixed from the clean image
            with torch.no_grad():
                logits = _classify(model, xi, proposals)
            if len(labels[i]) and int(labels[i].max()) >= logits.shape[1]:
                raise ValueError(f"labels[{i}] holds class {int(labels[i].max())}, out of range for a detector with "
                                 f"{logits.shape[1]} classes")
            gt = _scale_boxes(boxes[i].to(proposals), list(x.shape[-2:]), size)
            lab, mask = select_targets(proposals, logits.softmax(1), gt, labels[i].to(x.device),
                                       select_iou=select_iou, score_thresh=score_thresh)
            pi = torch.cat([torch.zeros(1, dtype=torch.long), derangement(logits.shape[1] - 1, gen) + 1])
            r, c = dag_single(_positive_logits(model, proposals, mask), xi, lab, pi.to(x.device)[lab],
                              mask=mask, gamma=gamma, max_iter=max_iter,
                              min_active=int(stop_fraction * int(mask.sum())))
            rs.append(r)
            counts.append(c)
            bar.update(1)
            bar.set_postfix(iterations=len(c) - 1)
    r = torch.cat(rs)
    return DAGResult(r, (x + r).clamp(0, 1), counts, [len(c) - 1 for c in counts])
