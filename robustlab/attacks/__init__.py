"""Attacks on image classifiers in pixel space [0, 1].

>>> import robustlab as rl
>>> atk = rl.attacks.create("pgd", eps=8/255, steps=10)
>>> x_adv = atk(model, x, y)          # same shape as x, in [0, 1]
>>> res = atk.run(model, x, y)        # .x_adv, .success, .steps per sample
"""
from robustlab.attacks.base import Attack, AttackResult, inference_state
from robustlab.attacks.cw import CarliniWagnerL2
from robustlab.attacks.dag import DAGResult, dag_segmentation, derangement
from robustlab.attacks.detection import dag_detection, dense_proposals, proposal_logits, rpn_settings, select_targets
from robustlab.attacks.diversity import DIVERSITY_SCALE, DiversityDraw, InputDiversity, padded_size, resize_pad
from robustlab.attacks.ensemble import NIPS2017_WEIGHTS, Ensemble
from robustlab.attacks.iterative import IterativeAttack
from robustlab.attacks.losses import cross_entropy, cw_margin, get_loss, loss_names, random_other_class
from robustlab.attacks.presets import canonical_name, create, ifgsm_steps, names, pgd_step_size
from robustlab.attacks.threat import L2Ball, LinfBall, ThreatModel, create_threat

__all__ = [
    "Attack",
    "AttackResult",
    "CarliniWagnerL2",
    "DAGResult",
    "DIVERSITY_SCALE",
    "DiversityDraw",
    "Ensemble",
    "InputDiversity",
    "IterativeAttack",
    "L2Ball",
    "LinfBall",
    "NIPS2017_WEIGHTS",
    "ThreatModel",
    "canonical_name",
    "create",
    "create_threat",
    "cross_entropy",
    "cw_margin",
    "dag_detection",
    "dag_segmentation",
    "dense_proposals",
    "derangement",
    "get_loss",
    "ifgsm_steps",
    "inference_state",
    "loss_names",
    "names",
    "padded_size",
    "pgd_step_size",
    "proposal_logits",
    "random_other_class",
    "resize_pad",
    "rpn_settings",
    "select_targets",
]
