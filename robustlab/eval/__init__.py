"""Evaluation: accuracy and robust accuracy, white-box robustness curves,
transfer matrices and all-or-nothing accuracy, the hold-out ensemble protocol
(Table 3.3), the NIPS 2017 competition protocol (§3.4.5), the gradient-masking
checklist, corruption robustness (ImageNet-C mCE, ImageNet-A), dense metrics
(segmentation mIoU, detection mAP) and model analysis.

``rl.eval.evaluate(model, data, eps=8/255)`` is the one call for a model's
robustness (:mod:`robustlab.eval.evaluate`)."""
from robustlab.eval import protocols
from robustlab.eval.analysis import batch_vs_running, bn_statistics, feature_maps, perceptibility
from robustlab.eval.corruption import (
    ALEXNET_ERRORS,
    IMAGENET_A_INDICES,
    corruption_errors,
    imagenet_a_logits,
    load_corrupted_folder,
    mce,
    relative_mce,
)
from robustlab.eval.defenses import DEFENSES, JPEG, Randomization, defended
from robustlab.eval.dense import (
    detect,
    detection_report,
    detection_transfer_table,
    mean_ap,
    mean_iou,
    nms_iou_curve,
    permute_perturbation,
    segmentation_report,
    transfer_table,
)
from robustlab.eval.evaluate import Evaluation, evaluate
from robustlab.eval.holdout import holdout_evaluation
from robustlab.eval.metrics import accuracy, misclassified, predict
from robustlab.eval.nips2017 import NIPS2017_EPS_255, nips2017_attack, run_nips2017
from robustlab.eval.robust import robust_accuracy
from robustlab.eval.sanity import SanityWarning, run_sanity_checks, sanity_check
from robustlab.eval.transfer import adversarial_sets, all_or_nothing, transfer_matrix
from robustlab.eval.whitebox import PROTOCOLS, RobustnessCurve, robustness_curve, worst_case

__all__ = [
    "ALEXNET_ERRORS", "IMAGENET_A_INDICES", "corruption_errors", "imagenet_a_logits", "load_corrupted_folder",
    "mce", "relative_mce", "detect", "detection_report", "detection_transfer_table", "mean_ap", "mean_iou",
    "nms_iou_curve", "permute_perturbation", "segmentation_report", "transfer_table",
    "NIPS2017_EPS_255", "PROTOCOLS", "RobustnessCurve", "SanityWarning", "accuracy", "adversarial_sets",
    "all_or_nothing", "batch_vs_running", "bn_statistics", "feature_maps", "holdout_evaluation", "misclassified",
    "nips2017_attack", "perceptibility", "predict", "robust_accuracy", "robustness_curve", "run_nips2017",
    "run_sanity_checks", "sanity_check", "transfer_matrix", "worst_case",
    "Evaluation", "evaluate", "protocol_names", "protocols", "DEFENSES", "JPEG", "Randomization", "defended",
]


def protocol_names() -> list[str]:
    """The protocols :func:`evaluate` runs (``standard``, ``thesis``, ``quick``);
    ``rl.eval.protocols.names()`` lists every evaluation kind."""
    return protocols.robust_names()
