"""Evaluation: accuracy and robust accuracy, the hold-out ensemble protocol
(Table 3.3) and the NIPS 2017 competition protocol (§3.4.5)."""
from robustlab.eval.holdout import holdout_evaluation
from robustlab.eval.metrics import accuracy, misclassified, predict
from robustlab.eval.nips2017 import NIPS2017_EPS_255, nips2017_attack, run_nips2017
from robustlab.eval.robust import robust_accuracy

__all__ = [
    "NIPS2017_EPS_255", "accuracy", "holdout_evaluation", "misclassified", "nips2017_attack", "predict",
    "robust_accuracy", "run_nips2017",
]
