"""The one registry of evaluation protocols.

Robust-accuracy protocols (what :func:`robustlab.eval.evaluate` runs) are
cascades of attack stages (:class:`robustlab.attacks.cascade.Stage`):

``standard``  RobustBench-comparable (untargeted threat model), each stage on
              the points still robust, the pointwise worst case: APGD with
              the cross-entropy loss and APGD with the logit-margin loss
              (``steps`` = 100 each; the margin stage aims at whichever wrong
              class leads at each step, so it covers APGD-T's first target),
              then APGD with the margin loss targeted at the next ``targets``
              most likely wrong classes (ranks 2 … targets + 1, as APGD-T
              picks them), ``target_steps`` = steps/2 each. A gradient-free
              Square Attack (5000 queries) follows when the masking checklist
              flags the model, or ``fallback=True``.
``thesis``    §4.6.1 / §6.3: PGD towards a uniformly random wrong class,
              ε = 16, α = 1, random start, curves over 10 … 2000 iterations.
              Scored on the final iterate (as the thesis and FAIR's code do),
              with the best-iterate figure beside it.
``quick``     one CE PGD-20 (α = 2.5·ε/20, random start): training-time
              monitoring (``robustlab train``'s ``eval.attack: pgd``, which
              sets ``steps``, ``step_size`` and ``targeted``: towards a
              uniformly random wrong class, scored as accuracy).

The other protocol kinds (``transfer``, ``blackbox``, ``holdout``,
``corruption``, ``accuracy``, ``dense``) evaluate several models or other
data; :func:`names` lists every kind and :func:`describe` says what each one
runs.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from robustlab.attacks.cascade import Stage
from robustlab.units import from_255

#: APGD iterations per stage (AutoAttack's standard version: 100).
STANDARD_STEPS = 100
#: Wrong classes the targeted stages aim at after the margin stage's own (AutoAttack: 9
#: targets; ranks 2-4 carry nearly all of APGD-T's extra breaks, benchmarks/eval_strength.py).
STANDARD_TARGETS = 3
#: Iterations per targeted stage, as a fraction of ``steps``: on the benchmark's three robust
#: models, 50 instead of 100 changed the result by at most one image in 500 and cut the cost by 29 %.
TARGET_STEPS_FRACTION = 0.5
#: Square Attack queries and initial square fraction (AutoAttack standard: 5000, 0.8).
SQUARE_QUERIES, SQUARE_P_INIT = 5000, 0.8
#: §4.6.1 / §6.3: the thesis's white-box curve.
THESIS_STEPS = (10, 20, 50, 100, 200, 500, 1000, 2000)
THESIS_EPS, THESIS_ALPHA = from_255(16), from_255(1)
QUICK_STEPS = 20


@dataclass(frozen=True)
class RobustProtocol:
    """A robust-accuracy protocol: its stages for a budget, and the options it takes."""

    name: str
    build: Callable[..., list[Stage]]
    options: dict[str, Any]
    fallback_default: bool | None  # None: decided by the masking checklist
    doc: str

    def resolve(self, options: dict[str, Any] | None) -> dict[str, Any]:
        """The protocol's options with ``options`` applied; a key it has not, or
        a value of the wrong kind, is refused before any work."""
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"options must be a dict of protocol options ({', '.join(sorted(self.options))}); "
                            f"got {type(options).__name__}")
        opts = dict(self.options)
        for key, value in (options or {}).items():
            if key not in opts:
                raise ValueError(f"protocol {self.name!r} has no option {key!r}; options: {', '.join(sorted(opts))}")
            opts[key] = value
        p_init = opts.get("p_init")
        if isinstance(p_init, bool) or not isinstance(p_init, (int, float)) or not 0 < p_init <= 1:
            raise ValueError(f"option p_init (Square's initial square fraction, 0.8) must be in (0, 1]; got {p_init!r}")
        alpha = opts.get("step_size")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))):
            raise ValueError(f"option step_size must be a number in pixel units (1/255); got {alpha!r}")
        return opts


def _positive_int(opts: dict[str, Any], key: str) -> int:
    v = opts[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"option {key} must be a whole number >= 1; got {v!r}")
    return v


def targeted_steps(opts: Mapping[str, Any]) -> int | None:
    """The iterations of each targeted stage of resolved options: their
    ``target_steps``, else ``steps`` × :data:`TARGET_STEPS_FRACTION`; None for
    a protocol without targeted stages of their own."""
    if "target_steps" not in opts or not isinstance(opts.get("steps"), int):
        return None
    if opts["target_steps"] is None:
        return max(int(opts["steps"] * TARGET_STEPS_FRACTION), 1)
    return _positive_int(dict(opts), "target_steps")


def _standard(eps: float, opts: dict[str, Any]) -> list[Stage]:
    steps, targets, restarts = (_positive_int(opts, k) for k in ("steps", "targets", "restarts"))
    t_steps = targeted_steps(opts)
    stages = []
    for r in range(restarts):
        tag = f" #{r + 1}" if restarts > 1 else ""
        stages += [Stage(f"apgd-ce{tag}", "apgd", steps, loss="ce"),
                   Stage(f"apgd-margin{tag}", "apgd", steps, loss="cw")]
    # Rank 1 is the margin stage's own target (its loss follows the leading wrong class).
    stages += [Stage(f"apgd-margin-t{k}", "apgd", t_steps, loss="cw", target="top", target_rank=k)
               for k in range(2, targets + 2)]
    return stages


def _thesis(eps: float, opts: dict[str, Any]) -> list[Stage]:
    steps = opts["steps"]
    if isinstance(steps, int):
        steps = (steps,)
    steps = tuple(sorted({int(s) for s in steps}))
    if not steps or steps[0] < 1:
        raise ValueError(f"option steps must be iteration counts >= 1; got {opts['steps']!r}")
    alpha = opts["step_size"]
    if alpha is None or not 0 < float(alpha) <= 1:
        raise ValueError(f"option step_size must be in (0, 1] pixel units (1/255 = thesis α 1); got {alpha!r}")
    return [Stage("pgd-targeted", "pgd", steps[-1], loss="ce", target="random", step_size=float(alpha),
                  early_stop=False, record=steps)]


def _quick(eps: float, opts: dict[str, Any]) -> list[Stage]:
    steps = _positive_int(opts, "steps")
    alpha, targeted = opts["step_size"], opts["targeted"]
    if alpha is None:
        alpha = 2.5 * eps / steps
    elif isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise ValueError(f"option step_size must be None (2.5·ε/steps) or in (0, 1] pixel units; got {alpha!r}")
    if not isinstance(targeted, bool):
        raise ValueError(f"option targeted must be true or false; got {targeted!r}")
    return [Stage(f"pgd-{steps}" + ("-targeted" if targeted else ""), "pgd", steps, loss="ce",
                  target="random" if targeted else None, step_size=float(alpha))]


ROBUST: dict[str, RobustProtocol] = {
    "standard": RobustProtocol("standard", _standard,
                               {"steps": STANDARD_STEPS, "targets": STANDARD_TARGETS, "target_steps": None,
                                "restarts": 1, "queries": SQUARE_QUERIES, "p_init": SQUARE_P_INIT},
                               None, "APGD-CE, APGD-margin, targeted APGD-margin at the next wrong classes; "
                               "Square when masking is suspected"),
    "thesis": RobustProtocol("thesis", _thesis,
                             {"steps": THESIS_STEPS, "step_size": THESIS_ALPHA, "queries": SQUARE_QUERIES,
                              "p_init": SQUARE_P_INIT},
                             False, "§4.6.1/§6.3: targeted random-target PGD, α = 1/255, final iterate scored"),
    "quick": RobustProtocol("quick", _quick, {"steps": QUICK_STEPS, "step_size": None, "targeted": False,
                                              "queries": SQUARE_QUERIES, "p_init": SQUARE_P_INIT},
                            False, "one CE PGD (20 steps unless options say; α = 2.5·ε/steps)"),
}

#: Protocol kinds that evaluate several models or other data (not a single
#: robust accuracy): what each computes, and the library function behind it.
OTHER: dict[str, str] = {
    "accuracy": "clean top-1 accuracy (per BN route with mixture BN): rl.eval.accuracy",
    "whitebox": "robustness curve against PGD iterations (Fig. 4.6): rl.eval.robustness_curve",
    "transfer": "success of I-FGSM/MI/DI²/M-DI² from each source model on each target (Tables 3.1-3.2): "
                "rl.eval.transfer_matrix",
    "blackbox": "all-or-nothing accuracy over a set of attacks (§4.6.2): rl.eval.all_or_nothing",
    "holdout": "leave-one-out ensemble transfer (Table 3.3/3.4): rl.eval.holdout_evaluation",
    "nips2017": "the NIPS 2017 competition protocol, random ε per batch (§3.4.5): rl.eval.run_nips2017",
    "corruption": "15 corruptions × 5 severities, mCE (ch. 7): rl.eval.corruption_errors",
    "dense": "DAG on segmenters/detectors, mIoU and mAP (ch. 2): rl.eval.segmentation_report/detection_report",
}


def names() -> list[str]:
    """Every protocol kind: the robust-accuracy ones first."""
    return [*ROBUST, *OTHER]


def robust_names() -> list[str]:
    """The protocols :func:`robustlab.eval.evaluate` runs."""
    return list(ROBUST)


def describe(name: str) -> str:
    if name in ROBUST:
        return ROBUST[name].doc
    if name in OTHER:
        return OTHER[name]
    raise ValueError(f"unknown protocol {name!r}; known: {', '.join(names())}")


def get(name: str) -> RobustProtocol:
    """A robust-accuracy protocol by name."""
    if not isinstance(name, str) or name not in ROBUST:
        hint = f" ({name!r} evaluates several models: see rl.eval.protocols.describe)" if name in OTHER else ""
        raise ValueError(f"protocol must be one of {', '.join(ROBUST)}; got {name!r}{hint}")
    return ROBUST[name]


def stages_for(name: str, eps: float, options: dict[str, Any] | None = None, *,
               fallback: bool = False) -> tuple[list[Stage], dict[str, Any]]:
    """(stages, resolved options) of a robust protocol at budget ``eps``."""
    proto = get(name)
    opts = proto.resolve(options)
    stages = proto.build(eps, opts)
    if "step_size" in opts and opts["step_size"] is None and stages:  # quick's default α, recorded as it ran
        opts["step_size"] = stages[0].step_size
    if fallback:
        stages.append(Stage("square", "square", _positive_int(opts, "queries"), p_init=float(opts["p_init"])))
    return stages, opts


def stage_names(stages: Sequence[Stage]) -> list[str]:
    return [s.name for s in stages]
