"""How a report writes numbers and names: percentages with their 95% Wilson
interval and n, budgets in the thesis's 0–255 notation beside pixels, readable
labels for the keys of ``results.json``, recipes and networks as text."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from robustlab.units import parse_budget, to_255

#: Metric keys the training loop and the commands write, as a reader says them.
LABELS = {
    "clean_acc": "clean acc", "adv_acc": "adv acc", "robust_acc": "robust acc",
    "train_acc": "train acc", "train_acc_adv": "train acc (adv)", "train_acc_clean": "train acc (clean)",
    "train_loss": "train loss", "train_loss_adv": "train loss (adv)", "train_loss_clean": "train loss (clean)",
    "train_seconds": "train time (s)", "images_per_second": "throughput (img/s)", "seconds": "time (s)",
    "epoch": "epochs", "steps": "steps", "step": "step", "lr": "learning rate",
    "clean_accuracy": "clean acc", "robust_accuracy": "robust acc", "adversarial_accuracy": "adv acc",
    "clean_error": "clean error", "mean_error": "mean error", "mce_vs_alexnet": "mCE vs AlexNet (%)",
    "loss_start": "loss at start", "loss_end": "loss at end", "random_search": "random search",
    "unbounded": "unbounded PGD", "pgd": "PGD", "noise": "random noise", "clean": "clean", "n": "n", "eps": "ε",
}

ATTACKS = {"fgsm": "FGSM", "ifgsm": "I-FGSM", "mifgsm": "MI-FGSM", "di2fgsm": "DI²-FGSM",
           "mdi2fgsm": "M-DI²-FGSM", "pgd": "PGD", "gd": "GD", "cw": "C&W", "dcw": "D-C&W", "apgd": "APGD",
           "square": "Square"}

RECIPES = {"vanilla": "standard training", "madry": "Madry", "fast": "fast single-step", "mixed": "clean/adv mixing",
           "alp": "ALP", "mbn": "mixture BN", "advprop": "AdvProp", "advprop_finegrained": "fine-grained AdvProp"}

NORMS = {"linf": "L∞", "l2": "L2"}


def humanize(key: str) -> str:
    """A results key as a label: known metrics by name (``train_acc_adv`` →
    ``train acc (adv)``), others with their underscores spelled as spaces."""
    if key in LABELS:
        return LABELS[key]
    if key.startswith("→ "):  # a transfer target: a model's name, as the claims and results.json spell it
        return key
    for stem in ("_acc_", "_loss_", "_error_"):
        head, sep, tail = key.partition(stem)
        if sep:
            return f"{humanize(head + stem[:-1])} ({tail.replace('_', ' ')})"
    return key.replace("_", " ")


def attack_label(name: str) -> str:
    return ATTACKS.get(str(name), str(name))


# ------------------------------------------------------------------ proportions


NOTHING = "—"  # a rate over no image (n = 0): 0 / 0 measures nothing


def row_counts(ev: Mapping[str, Any]) -> list[Any]:
    """Images behind each row of an evaluation's table: its ``n``, or one per
    row where ``n`` is a list as long as the table (a sweep's gaps: one inner
    evaluation each). A count of 0 means the row's rates are 0 / 0."""
    n, table = ev.get("n"), ev.get("table") or []
    if isinstance(n, list) and len(n) == len(table):
        return n
    return [n] * len(table)


def counted_nothing(n: Any) -> bool:
    """n recorded, and 0 (not unknown, not a flag)."""
    return n == 0 and not isinstance(n, bool)


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion p measured on n samples."""
    if n <= 0:
        return (0.0, 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def interval(p: float, n: int | None) -> str:
    """``[37.0, 45.5] n=500``: the 95% Wilson interval in percent and n;
    empty when n is unknown (the report says so instead)."""
    if not n:
        return ""
    lo, hi = wilson(float(p), int(n))
    return f"[{100 * lo:.1f}, {100 * hi:.1f}] n={int(n)}"


def pct(p: float | None, n: int | None) -> str:
    """``41.2% [37.0, 45.5] n=500``: a percentage with its 95% interval (the
    one form every report uses); ``41.2% (n not recorded)`` without n."""
    if p is None:
        return "—"
    if counted_nothing(n):
        return f"{NOTHING} (n=0: counted no image)"
    ci = interval(p, n)
    return f"{100 * float(p):.1f}% {ci}" if ci else f"{100 * float(p):.1f}% (n not recorded)"


def is_proportion(v: Any) -> bool:
    return isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0


def number(v: Any) -> str:
    """A plain number as the report writes it (4 decimals, as ``results.json``'s summary)."""
    if isinstance(v, bool) or v is None:
        return "—" if v is None else ("yes" if v else "no")
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return str(v)


def short(v: Any) -> str:
    """A value in a sentence: ``0.25``, ``1e-05``, ``12``, lists joined."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(short(x) for x in v)
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


# ------------------------------------------------------------------ claims

_OPS = (">=", "<=", "==", "!=", ">", "<")


def _side(v: Any) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return str(v)
    return f"{v:.3f}" if abs(v) <= 1 else f"{v:.4g}"


#: Column words whose numbers are not rates (BN statistics, perceptibility, iteration and
#: proposal counts, L∞ in 0–255, times): a difference of them is not percentage points.
NOT_RATE_COLUMNS = ("perceptibility", "iterations", "proposals", "L∞", "var ratio", "|Δ", "seconds")


def difference_text(left: float, right: float, unit: str | None = None) -> str:
    """``+52.6 points`` (percentage points: ``unit`` ``proportion``, or without
    a recorded unit both sides in [0, 1]) or ``difference +3.1``."""
    d = float(left) - float(right)
    if unit == "proportion" or (unit is None and abs(left) <= 1 and abs(right) <= 1):
        return f"{100 * d:+.1f} points"
    return f"difference {d:+.4g}"


def comparisons(claim: Mapping[str, Any]) -> list[tuple[str, str, bool | None]]:
    """What a claim compared, leading its row in the verdict tables: one
    ``(item, "0.530 > 0.532 (-0.2 points, 95% CI [-6.4, +6.0])", within_noise)``
    per comparison (the ``for_each`` item, or "" for a single comparison;
    the interval and the flag where results.json has them, else None);
    empty for a claim not evaluated or a record written before results.json
    kept the comparison (its cells are all there is)."""
    parts = claim.get("for_each") if isinstance(claim.get("for_each"), list) else [claim]
    out = []
    for part in parts:
        if not isinstance(part, Mapping) or not all(isinstance(part.get(k), (int, float)) for k in ("left", "right")):
            continue
        op = part.get("op") or next((o for o in _OPS if o in str(part.get("holds_if", ""))), "vs")
        left, right = float(part["left"]), float(part["right"])
        unit = part.get("unit") if part.get("unit") in ("proportion", "number") else None
        terms = f"{part.get('left_term', '')} {part.get('right_term', '')}"
        if unit is None and any(w in terms for w in NOT_RATE_COLUMNS):  # a record from before ``unit``
            unit = "number"
        diff = difference_text(left, right, unit)
        ci = part.get("interval") if isinstance(part.get("interval"), Mapping) else {}
        if isinstance(ci.get("low"), (int, float)) and isinstance(ci.get("high"), (int, float)):
            level = ci.get("level", 0.95)
            diff += f", {100 * float(level):.0f}% CI [{100 * ci['low']:+.1f}, {100 * ci['high']:+.1f}]"
        noise = part.get("within_noise") if isinstance(part.get("within_noise"), bool) else None
        out.append((str(part.get("item", "")) if part is not claim else "", f"{_side(left)} {op} {_side(right)} "
                    f"({diff})", noise))
    return out


# ------------------------------------------------------------------ budgets


def pixels(value: Any) -> float | None:
    """A budget as a config writes it (``25`` in 0–255 units, ``"8/255"``,
    ``"0.5px"``), in pixels: what the config loader reads (``units.parse_budget``)."""
    if value is None:
        return None
    try:
        return parse_budget(value, "budget")
    except ValueError:
        return None


def budget(eps_px: float | None, norm: str = "linf", symbol: str = "ε") -> str:
    """``ε = 8/255 (0.0314) L∞``: a budget in 0–255 units and in pixels."""
    if eps_px is None:
        return f"{symbol} not recorded"
    norm_text = f" {NORMS.get(norm, norm)}" if norm else ""
    if norm == "l2":
        return f"{symbol} = {eps_px:.4g}{norm_text} (pixels)"
    return f"{symbol} = {to_255(eps_px):.4g}/255 ({eps_px:.4f}){norm_text}"


def steps_text(steps: Any) -> str:
    if steps is None:
        return "steps not recorded"
    if isinstance(steps, (list, tuple)):
        return f"steps {', '.join(str(s) for s in steps)}"
    return f"{steps} steps" if steps != 1 else "1 step"


def stage_steps_text(steps: Any, targeted: Any = None) -> str:
    """The steps of a cascade's stages: ``100 steps per stage (50 per targeted
    stage)``, the parenthesis only where the targeted stages run other counts."""
    extra = f" ({targeted} per targeted stage)" if targeted not in (None, steps) else ""
    return steps_text(steps) + " per stage" + extra


# ------------------------------------------------------------------ recipes and networks


def recipe_text(recipe: Mapping[str, Any]) -> str:
    """A recipe as a reader says it: ``Madry PGD-5, ε 25/255, α 8/255``.
    Takes a config's recipe (``eps: 25``) or a resolved one (``attack: {...}``)."""
    recipe = dict(recipe or {})
    name = str(recipe.pop("name", "?"))
    if name == "vanilla" and not any(v is not None for k, v in recipe.items() if k.startswith("smooth")):
        return RECIPES["vanilla"]
    attack = recipe.pop("attack", None)
    parts = []
    if isinstance(attack, Mapping):  # a resolved recipe: the attack's own record, in pixels
        eps, alpha = attack.get("eps"), attack.get("step_size")
        steps, norm, targeted = attack.get("steps"), attack.get("norm", "linf"), attack.get("targeted")
        attack_name = attack.get("name", "pgd")
        for key in ("eps", "steps", "step_size", "norm", "targeted"):
            recipe.pop(key, None)
    else:
        eps, alpha = pixels(recipe.pop("eps", None)), pixels(recipe.pop("step_size", None))
        steps, norm = recipe.pop("steps", None), recipe.pop("norm", "linf")
        targeted, attack_name = recipe.pop("targeted", None), attack or "pgd"
    head = RECIPES.get(name, name)
    adversarial = (name in RECIPES and name != "vanilla") or eps is not None or steps is not None
    if adversarial:
        head += f" {attack_label(attack_name)}" + (f"-{steps}" if steps is not None else "")
    parts.append(head)
    if eps is not None:
        parts.append(_budget_short("ε", eps, norm))
    if alpha is not None:
        parts.append(_budget_short("α", alpha, norm))
    if targeted:
        parts.append("targeted")
    for key, value in recipe.items():
        if value is None or key in ("routes", "random_start", "clean_init_prob", "bn_stats", "attack_route") \
                or (key == "smooth_alpha" and recipe.get("smooth_backward") is None):
            continue
        parts.append(f"{humanize(key)} {short(value)}")
    return ", ".join(parts)


def _budget_short(symbol: str, value: float, norm: str) -> str:
    if norm == "l2":
        return f"{symbol} {value:.4g} (L2)"
    return f"{symbol} {to_255(value):.4g}/255"


def network_text(spec: Mapping[str, Any]) -> str:
    """``smallcnn (width 16, act silu)``: a model spec as text."""
    spec = {k: v for k, v in (spec or {}).items() if v is not None}
    name = str(spec.pop("name", "?"))
    spec.update(spec.pop("kwargs", None) or {})
    rest = ", ".join(f"{humanize(k)} {short(v)}" for k, v in spec.items())
    return f"{name} ({rest})" if rest else name


def table_rows(rows: list[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Columns and formatted cells of a results table exactly as results.json
    holds it: the strings the terminal summary and the report's exact-values
    tables show (floats to 4 decimals, the raw column keys)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return columns, [[_plain(r.get(c, "")) for c in columns] for r in rows]


def _plain(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
