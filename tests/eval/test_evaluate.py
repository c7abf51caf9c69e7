"""rl.eval.evaluate: any data form, bounded model calls, scale-invariant
losses, the masking fallback, refusals before work, output checks, resume,
the audit, strength ordering, the thesis curve, determinism, save/load."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from toy_models import Unbreakable

import robustlab as rl
from robustlab.app.evaluate import work_done
from robustlab.attacks.cascade import margin, stage_loss
from robustlab.attacks.losses import cw_margin
from robustlab.eval.evaluate import Evaluation

FAST = {"steps": 10, "targets": 1}  # standard protocol, reduced for speed: 3 APGD stages of 10 steps


class Counting(nn.Module):
    """Records the batch size of every forward call of the wrapped model."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.sizes: list[int] = []

    def forward(self, x):  # noqa: ANN001, ANN201
        self.sizes.append(int(x.shape[0]))
        return self.net(x)


class Scaled(nn.Module):
    def __init__(self, net: nn.Module, factor: float) -> None:
        super().__init__()
        self.net, self.factor = net, factor

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.net(x) * self.factor


class Quantize(nn.Module):
    """round(levels·x)/levels: a zero gradient almost everywhere (masked gradients)."""

    def __init__(self, levels: int = 4) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x):  # noqa: ANN001, ANN201
        return torch.round(x * self.levels) / self.levels


class Lambda(nn.Module):
    def __init__(self, net: nn.Module, fn) -> None:  # noqa: ANN001
        super().__init__()
        self.net, self.fn = net, fn

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.fn(self.net(x), x)


@pytest.fixture(scope="module")
def linear():
    """Flatten + Linear(64, 10) trained on the digits: ~0.97 accurate and not robust."""
    x, y = rl.data.load_dataset("digits", "train").batch(slice(None))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _same(a: Evaluation, b: Evaluation) -> None:
    assert a.n == b.n
    assert a.clean_accuracy == b.clean_accuracy
    assert a.robust_accuracy == b.robust_accuracy
    assert a.per_attack == b.per_attack
    assert a.per_sample == b.per_sample


# -- 1. data forms ---------------------------------------------------------------

def test_every_data_form_gives_the_same_result(linear, digits):
    x, y = digits
    ds = rl.data.load_dataset("digits", "test")
    kw = {"eps": 0.05, "options": FAST, "checklist": False, "limit": 128, "batch_size": 128}
    ref = rl.eval.evaluate(linear, (x, y), **kw)
    assert ref.n == 128 and 0.9 < ref.clean_accuracy <= 1
    assert 0.05 < ref.robust_accuracy < ref.clean_accuracy  # partly robust: the attacks have work to do
    loader = DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    _same(ref, rl.eval.evaluate(linear, loader, **kw))
    _same(ref, rl.eval.evaluate(linear, ds, **kw))
    # Irregular batches (the loader's are 64, the slots 128): the pieces do not change the result.
    cuts = [0, 50, 150, 170, 300, 360]
    batches = [(x[a:b], y[a:b]) for a, b in zip(cuts, cuts[1:])]
    _same(ref, rl.eval.evaluate(linear, batches, **kw))
    assert len(ref.per_sample["broken_by"]) == 128
    assert ref.per_sample["clean_correct"] == (linear(x[:128]).argmax(1) == y[:128]).tolist()


# -- 2. bounded model calls and refill ---------------------------------------------

def test_model_calls_never_exceed_the_batch_size(linear, digits):
    x, y = digits
    loader = DataLoader(torch.utils.data.TensorDataset(x[:96], y[:96]), batch_size=32)
    model = Counting(linear)
    ev = rl.eval.evaluate(model, loader, eps=0.05, options=FAST, checklist=True)
    assert ev.options["sanity"] is not None and ev.options["batch_size"] == 32
    assert len(model.sizes) > 100 and max(model.sizes) <= 32  # the checklist's calls included
    model = Counting(linear)
    ev = rl.eval.evaluate(model, (x[:96], y[:96]), eps=0.05, options=FAST, checklist=True, batch_size=20)
    assert ev.options["sanity"] is not None and ev.n == 96
    assert max(model.sizes) <= 20 and max(model.sizes) == 20


def test_retired_slots_are_refilled(linear, digits):
    """On a model that breaks in a step or two, the cost follows the samples, not batches × steps."""
    x, y = digits
    model = Counting(linear)
    ev = rl.eval.evaluate(model, (x, y), eps=0.2, options=FAST, checklist=False, batch_size=32)
    assert ev.robust_accuracy < 0.05
    stage_iterations = 3 * (FAST["steps"] + 1)
    batch_by_batch = math.ceil(360 / 32) * stage_iterations
    assert len(model.sizes) < batch_by_batch / 4, (len(model.sizes), batch_by_batch)
    assert ev.model_calls <= len(model.sizes)
    assert max(model.sizes) <= 32
    # Every call is full until the stream runs dry: the calls below capacity are one tail (batch by
    # batch, each batch's drain would be followed by the next batch's full calls). The call of
    # 360 % 32 = 8 images is the clean check of the last data piece; the call of 1 image (the second) is the
    # probe's batch-dependence check.
    partial = [i for i, s in enumerate(model.sizes) if s < 32 and s != 360 % 32 and i != 1]
    assert model.sizes[1] == 1
    assert partial and all(s < 32 for s in model.sizes[partial[0]:]), model.sizes
    assert partial[0] >= 360 // 32


# -- 3. scale-invariant margin ---------------------------------------------------

def test_margin_gradient_survives_logits_times_1e4(trained_model, digits):
    x, y = digits[0][:64].clone(), digits[1][:64]
    scaled = Scaled(trained_model, 1e4).eval()
    target = (y + 1) % 10
    objectives = {
        "cw_margin": lambda z: cw_margin(z, y),
        "margin": lambda z: -margin(z, y),
        "stage_loss cw": lambda z: stage_loss("cw", z, y, None),
        "stage_loss cw targeted": lambda z: stage_loss("cw", z, y, target),
        "stage_loss dlr": lambda z: stage_loss("dlr", z, y, None),
    }
    for name, fn in objectives.items():
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(scaled(xg)).sum(), xg)
        per_sample = g.flatten(1).abs().sum(1)
        assert bool(torch.isfinite(g).all()), name
        assert bool((per_sample > 0).all()), f"{name}: zero input gradient for {(per_sample == 0).sum()} images"
    # The premise: cross-entropy saturates at this scale (zero gradient for confident images).
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(stage_loss("ce", scaled(xg), y, None).sum(), xg)
    assert int((g.flatten(1).abs().sum(1) == 0).sum()) > 32


def test_evaluate_is_invariant_to_logit_scale(trained_model, digits):
    # At ×1e4 the cross-entropy stage saturates (zero gradient: the premise above), so the
    # margin stages carry the attack alone. Sign steps and margin comparisons are
    # scale-invariant, so the scaled model's result must equal the margin stages run alone
    # on the plain model. With z − 1e4·onehot masking the scaled margin saturated too.
    from robustlab.attacks.cascade import Stage, model_forward, run_batch

    x, y = digits[0][:128], digits[1][:128]
    kw = {"eps": 0.1, "options": FAST, "checklist": False, "fallback": False}
    scaled = rl.eval.evaluate(Scaled(trained_model, 1e4).eval(), (x, y), **kw)
    stages, _ = rl.eval.protocols.stages_for("standard", 0.1, FAST)
    assert stages[0].loss == "ce" and all(st.loss == "cw" for st in stages[1:])
    # The CE stage replaced by one that moves no pixel, so the margin stages keep their
    # stage numbers (and with them their keyed random starts).
    stages = [Stage("still", "pgd", 1, loss="ce", step_size=1e-12, random_start=False), *stages[1:]]
    margin_only = run_batch(model_forward(trained_model), x, y, stages, eps=0.1)
    plain_margin = float((margin_only.stage == -1).float().mean())
    assert 0.1 < plain_margin < 0.9
    assert scaled.per_attack["apgd-ce"] > 0.9  # the blind CE stage breaks almost nothing
    assert abs(scaled.robust_accuracy - plain_margin) * 128 <= 1, (scaled.per_attack, plain_margin)


# -- 4. masked gradients and the Square fallback -----------------------------------

def test_masked_model_triggers_the_square_fallback(trained_model, digits):
    # On these 64 images the quantized model keeps ~98 % against the gradient stages at
    # ε = 0.15 (the zero gradient of round() stops them) while Square takes it to ~0:
    # at ε = 0.05 the two barely differ and at ε = 0.1 the gap is ~15 %, so 0.15 is where
    # "the gradient-only figure is inflated" holds by a wide margin.
    x, y = digits[0][:64], digits[1][:64]
    masked = nn.Sequential(Quantize(4), trained_model).eval()
    opts = {"steps": 10, "targets": 1, "queries": 300}
    auto = rl.eval.evaluate(masked, (x, y), eps=0.15, options=opts)
    assert auto.fallback["used"] is True
    assert "checklist" in auto.fallback["reason"]
    flagged = {w["check"] for w in auto.options["sanity"]["warnings"]}
    assert flagged and all(c in auto.fallback["reason"] for c in flagged)
    assert auto.options["stages"][-1] == "square" and "square" in auto.per_attack
    off = rl.eval.evaluate(masked, (x, y), eps=0.15, options=opts, fallback=False)
    assert off.fallback["used"] is False and "square" not in off.per_attack
    assert auto.clean_accuracy == off.clean_accuracy
    assert auto.robust_accuracy < off.robust_accuracy - 0.2, (auto.per_attack, off.per_attack)
    # Until Square, the two runs are the same cascade.
    for name in off.per_attack:
        assert auto.per_attack[name] == off.per_attack[name]
    notes = [w for w in off.warnings if w.startswith("[fallback]")]
    assert len(notes) == 1 and "masking is suspected" in notes[0]
    assert not any(w.startswith("[fallback]") for w in auto.warnings)


# -- 5. refusals before any work -------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,words", [
    ({"eps": 16}, ValueError, ("eps", "16/255")),
    ({"eps": 0}, ValueError, ("eps",)),
    ({"eps": -0.1}, ValueError, ("eps",)),
    ({"eps": float("nan")}, TypeError, ("eps",)),
    ({"eps": 0.1, "protocol": "autoattack"}, ValueError, ("protocol", "autoattack")),
    ({"eps": 0.1, "protocol": "transfer"}, ValueError, ("protocol",)),
    ({"eps": 0.1, "options": {"stepz": 5}}, ValueError, ("stepz",)),
    ({"eps": 0.1, "protocol": "quick", "options": {"targets": 1}}, ValueError, ("targets",)),
    ({"eps": 0.1, "norm": "l3"}, ValueError, ("norm", "l3")),
    ({"eps": 0.1, "batch_size": 0}, ValueError, ("batch_size",)),
    ({"eps": 0.1, "fallback": "yes"}, ValueError, ("fallback",)),
])
def test_bad_arguments_are_refused_before_the_model_runs(linear, digits, kwargs, exc, words):
    model = Counting(linear)
    with pytest.raises(exc) as err:
        rl.eval.evaluate(model, digits, **kwargs)
    for w in words:
        assert w in str(err.value), str(err.value)
    assert model.sizes == []


def test_l2_budgets_above_one_are_accepted(trained_model, digits):
    """The 0-255 guard is an L∞ rule: an L2 ball of radius 1.5 is a real budget (the 8×8 box's
    diameter is 8) and the L2 threat model itself accepts it."""
    x, y = digits[0][:32], digits[1][:32]
    assert rl.attacks.create_threat("l2", 1.5).eps == 1.5  # accepted by the threat model
    with pytest.raises(ValueError, match="16/255"):
        rl.eval.evaluate(trained_model, (x, y), eps=16, checklist=False)
    ev = rl.eval.evaluate(trained_model, (x, y), eps=1.5, norm="l2", checklist=False,
                          options={"steps": 2, "targets": 1})
    assert ev.audit["l2_max"] <= 1.5 + 1e-5 and ev.robust_accuracy < ev.clean_accuracy


@pytest.mark.parametrize(("kwargs", "exc", "words"), [
    ({"seed": None}, ValueError, "seed must be a whole number"), ({"seed": 2 ** 70}, ValueError, "seed must be"),
    ({"seed": 1.5}, ValueError, "seed must be"), ({"options": [1]}, TypeError, "options must be a dict"),
    ({"protocol": "thesis", "options": {"step_size": "a"}}, ValueError, "option step_size must be a number"),
    ({"checklist": "no"}, ValueError, "checklist must be True or False"),
    ({"options": {"p_init": -1}}, ValueError, "option p_init"), ({"options": {"p_init": 5}}, ValueError, "p_init"),
    ({"options": {"p_init": math.nan}}, ValueError, "option p_init"),
])
def test_more_bad_arguments_name_themselves(linear, digits, kwargs, exc, words):
    """They failed inside torch ('int() argument ... NoneType', 'Overflow when unpacking long', 'list' has no
    'items'), or were taken: checklist='no' ran the checklist, p_init=-1 weakened Square without a word."""
    with pytest.raises(exc, match=words):
        rl.eval.evaluate(linear, digits, **{"eps": 0.05, "protocol": "quick", **kwargs})


def test_a_model_whose_outputs_depend_on_the_batch_is_warned(linear, digits):
    """BatchNorm with track_running_stats=False normalizes by each call's images: robust accuracy read 0.79, 0.81
    and 0.54 at batch sizes 48, 16 and 4, without a word."""
    torch.manual_seed(0)
    batchy = nn.Sequential(nn.BatchNorm2d(1, track_running_stats=False), linear)
    x, y = digits[0][:32], digits[1][:32]
    ev = rl.eval.evaluate(batchy, (x, y), eps=0.05, protocol="quick", checklist=False)
    assert any(w.startswith("[batch] an image's logits change with the other images") for w in ev.warnings)
    ev = rl.eval.evaluate(linear, (x, y), eps=0.05, protocol="quick", checklist=False)
    assert not any(w.startswith("[batch]") for w in ev.warnings)


def test_targeted_stages_a_model_has_no_classes_for_are_not_listed_as_run():
    """On a 2-class model per_attack and summary() listed apgd-margin-t2...t4, which were skipped."""
    torch.manual_seed(0)
    x, y = torch.rand(20, 1, 8, 8), torch.randint(0, 2, (20,))
    for k, listed in ((2, ["apgd-ce", "apgd-margin"]), (3, ["apgd-ce", "apgd-margin", "apgd-margin-t2"])):
        ev = rl.eval.evaluate(nn.Sequential(nn.Flatten(), nn.Linear(64, k)), (x, y), eps=0.05, checklist=False,
                              options={"steps": 5})
        assert list(ev.per_attack) == listed and "t3" not in ev.summary()


def test_an_l2_budget_beyond_the_image_box_is_refused(linear, digits):
    with pytest.raises(ValueError, match=r"an L2 budget of 300 is above the largest distance between two \(1, 8, 8\)"):
        rl.eval.evaluate(linear, digits, eps=300, norm="l2", protocol="quick")


def test_numpy_and_torch_scalars_are_budgets(linear, digits):
    import numpy as np

    x, y = digits[0][:16], digits[1][:16]
    ref = rl.eval.evaluate(linear, (x, y), eps=0.05, protocol="quick", checklist=False, seed=np.int64(2))
    for eps in (np.float32(0.05), torch.tensor(0.05)):
        ev = rl.eval.evaluate(linear, (x, y), eps=eps, protocol="quick", checklist=False, seed=2)
        assert ev.per_sample == ref.per_sample


def test_attack_preset_refuses_eps_in_255_units():
    with pytest.raises(ValueError, match="eps") as err:
        rl.attacks.create("pgd", eps=16)
    assert "16/255" in str(err.value)


# -- 6. bad model outputs --------------------------------------------------------

def test_nan_logits_are_refused(linear, digits):
    model = Lambda(linear, lambda z, x: z * float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        rl.eval.evaluate(model, digits, eps=0.05, options=FAST)


def test_tuple_output_is_refused(linear, digits):
    model = Lambda(linear, lambda z, x: (z, z))
    with pytest.raises(TypeError, match="tuple"):
        rl.eval.evaluate(model, digits, eps=0.05, options=FAST)


def test_probabilities_and_randomness_are_warned(linear, digits):
    x, y = digits[0][:32], digits[1][:32]
    probs = Lambda(linear, lambda z, x: z.softmax(1))
    ev = rl.eval.evaluate(probs, (x, y), eps=0.05, options=FAST, checklist=False)
    assert any(w.startswith("[probabilities]") for w in ev.warnings), ev.warnings
    assert not any(w.startswith("[randomness]") for w in ev.warnings)
    noisy = Lambda(linear, lambda z, x: z + 0.1 * torch.randn_like(z))
    ev = rl.eval.evaluate(noisy, (x, y), eps=0.05, options=FAST, checklist=False)
    assert any(w.startswith("[randomness]") for w in ev.warnings), ev.warnings
    assert not any(w.startswith("[probabilities]") for w in ev.warnings)
    ev = rl.eval.evaluate(linear, (x, y), eps=0.05, options=FAST, checklist=False)
    assert not any(w.startswith(("[randomness]", "[probabilities]")) for w in ev.warnings), ev.warnings


# -- 7. resume -------------------------------------------------------------------

def test_resume_from_a_state_file(linear, digits, tmp_path):
    x, y = digits
    kw = {"eps": 0.05, "options": FAST, "checklist": False, "batch_size": 32}
    state = tmp_path / "state.json"
    model = Counting(linear)
    full = rl.eval.evaluate(model, (x, y), state=state, **kw)
    full_calls = len(model.sizes)
    assert state.is_file()
    saved = json.loads(state.read_text())
    assert sorted(saved["tally"]["index"]) == list(range(360))

    model, seen = Counting(linear), []
    again = rl.eval.evaluate(model, (x, y), state=state, progress=seen.append, **kw)
    _same(full, again)
    # a finished evaluation says so: all 360 samples done from the saved state, none attacked here
    assert seen and seen[-1]["done"] == seen[-1]["resumed"] == 360 and seen[-1]["active"] == 0
    # and reports the cost it took, not this call's nothing (model_calls 0 and a fraction of the seconds)
    assert again.model_calls == full.model_calls > 0 and again.iterations == full.iterations
    assert again.seconds >= json.loads(state.read_text())["tally"]["seconds"] - 1e-3 > 0.5 * full.seconds
    assert again.audit == full.audit
    assert len(model.sizes) <= 3 < full_calls  # only the first batch's clean checks

    # Keep the first half of the records (the same positions in each parallel list).
    tally = saved["tally"]
    half = len(tally["index"]) // 2
    for key in ("index", "clean", "stage", "step", "recorded"):
        tally[key] = tally[key][:half]
    state.write_text(json.dumps(saved))
    model = Counting(linear)
    part = rl.eval.evaluate(model, (x, y), state=state, **kw)
    _same(full, part)
    assert 3 < len(model.sizes) < full_calls

    for other in ({"eps": 0.06}, {"seed": 1}, {"options": {"steps": 11, "targets": 1}}):
        with pytest.raises(ValueError, match="other settings"):
            rl.eval.evaluate(linear, (x, y), state=state, **{**kw, **other})
    # Another model, other images, or the same images in another order: the state is refused, not reported as
    # theirs (a vanilla model resumed from a robust one's state read the robust one's accuracy).
    import copy

    other_model = copy.deepcopy(linear)
    with torch.no_grad():
        other_model[1].bias += 0.1
    shuffled = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    for m, data in ((other_model, (x, y)), (linear, (x[shuffled], y[shuffled])), (linear, (x[1:], y[1:]))):
        with pytest.raises(ValueError, match="of another model .* or on other data"):
            rl.eval.evaluate(m, data, state=state, **kw)
    assert rl.eval.evaluate(linear, (x, y), state=state, **kw).per_sample == full.per_sample


# -- 8. the audit ----------------------------------------------------------------

@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_audit_bounds_every_returned_image(trained_model, digits, norm, eps):
    x, y = digits[0][:64], digits[1][:64]
    ev = rl.eval.evaluate(trained_model, (x, y), eps=eps, norm=norm, checklist=False, fallback=True,
                          options={"steps": 5, "targets": 1, "queries": 50})
    a = ev.audit
    assert a["nan_count"] == 0 and a["within_budget"] is True
    assert a["pixel_min"] >= 0 and a["pixel_max"] <= 1
    if norm == "linf":
        assert a["linf_max"] <= eps + 1e-6
        assert a["linf_max"] > eps / 2  # it measures the attacks' images, not zeros
    else:
        assert a["l2_max"] <= eps + 1e-5
        assert a["l2_max"] > eps / 2
    assert not any(w.startswith("[audit]") for w in ev.warnings)
    assert ev.examples is not None
    ex = ev.examples
    d = (ex["adversarial"] - ex["clean"]).flatten(1)
    assert float((d.abs().amax(1) if norm == "linf" else d.norm(dim=1)).max()) <= eps + 1e-5


# -- 9. strength ordering and per-sample bookkeeping ---------------------------------

def test_standard_is_at_least_as_strong_as_quick(trained_model, digits):
    x, y = digits[0][:128], digits[1][:128]
    n = 128
    std = rl.eval.evaluate(trained_model, (x, y), eps=0.1, options=FAST, checklist=False)
    quick = rl.eval.evaluate(trained_model, (x, y), eps=0.1, protocol="quick", checklist=False)
    assert 0.1 < quick.robust_accuracy < 0.9
    assert std.robust_accuracy * n <= quick.robust_accuracy * n + 1 + 1e-9
    values = list(std.per_attack.values())
    assert list(std.per_attack) == std.options["stages"]
    assert all(b <= a for a, b in zip(values, values[1:])) and values[0] <= std.clean_accuracy
    assert values[-1] == std.robust_accuracy
    broken_by = std.per_sample["broken_by"]
    assert set(broken_by) <= {*std.options["stages"], "clean", None}
    assert broken_by.count(None) == round(std.robust_accuracy * n)
    assert broken_by.count("clean") == round((1 - std.clean_accuracy) * n)
    for name, acc in std.per_attack.items():  # per_attack re-derived from per_sample
        k = std.options["stages"].index(name)
        later = set(std.options["stages"][k + 1:]) | {None}
        assert acc == sum(b in later for b in broken_by) / n
    for b, at in zip(broken_by, std.per_sample["broken_at"]):
        if b is None:
            assert at == -1
        elif b == "clean":
            assert at == 0
        else:
            assert 0 <= at <= FAST["steps"]


# -- 10. thesis curve ------------------------------------------------------------

def test_thesis_curve_best_below_final(trained_model, digits):
    x, y = digits[0][:128], digits[1][:128]
    ev = rl.eval.evaluate(trained_model, (x, y), eps=16 / 255, protocol="thesis", checklist=False,
                          options={"steps": (5, 10, 20)})
    c = ev.curve
    assert c is not None and c["steps"] == [5, 10, 20]
    best, final = c["best_accuracy"], c["final_accuracy"]
    assert len(best) == len(final) == 3
    for b, f in zip(best, final):
        assert b <= f <= ev.clean_accuracy
    assert all(b2 <= b1 for b1, b2 in zip(best, best[1:]))
    assert ev.robust_accuracy == final[-1]
    assert best[-1] < best[0]  # the curve moves: the budget is not trivial
    # best_accuracy[i]: correct at every iterate up to steps[i], from the per-sample records.
    ps = ev.per_sample
    for s, b in zip(c["steps"], best):
        alive = sum(cc and (by is None or at > s) for cc, by, at in
                    zip(ps["clean_correct"], ps["broken_by"], ps["broken_at"]))
        assert b == alive / ev.n


# -- 11. determinism -------------------------------------------------------------

def test_results_do_not_depend_on_the_run_or_the_batch_size(trained_model, digits):
    x, y = digits[0][:128], digits[1][:128]
    kw = {"eps": 0.1, "options": FAST, "checklist": False, "seed": 3}
    a = rl.eval.evaluate(trained_model, (x, y), batch_size=64, **kw)
    b = rl.eval.evaluate(trained_model, (x, y), batch_size=64, **kw)
    assert a.per_sample == b.per_sample
    small = rl.eval.evaluate(trained_model, (x, y), batch_size=16, **kw)
    # Per-sample keyed randomness: the slot a sample shares a call with does not matter.
    assert small.per_sample == a.per_sample
    assert small.options["batch_size"] == 16 and a.options["batch_size"] == 64


# -- 12. save / load -------------------------------------------------------------

def test_save_and_load_round_trip(linear, digits, tmp_path):
    x, y = digits[0][:64], digits[1][:64]
    ev = rl.eval.evaluate(linear, (x, y), eps=0.05, options=FAST, batch_size=64)
    path = ev.save(tmp_path / "ev.json")
    back = Evaluation.load(path)
    assert back.to_dict() == ev.to_dict()
    assert back.robust_accuracy == ev.robust_accuracy and back.per_sample == ev.per_sample
    thesis = rl.eval.evaluate(linear, (x, y), eps=0.05, protocol="thesis", checklist=False,
                              options={"steps": (2, 4)})
    back = Evaluation.load(thesis.save(tmp_path / "thesis.json"))
    assert back.curve == thesis.curve
    assert json.loads(json.dumps(back.to_dict())) == json.loads(json.dumps(thesis.to_dict()))

    (tmp_path / "other.json").write_text(json.dumps({"epochs": 3, "loss": 0.1}))
    with pytest.raises(ValueError, match="not a saved evaluation"):
        Evaluation.load(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a saved evaluation"):
        Evaluation.load(tmp_path / "broken.json")


class _NanAwayFromClean(nn.Module):
    """Finite logits on the clean (all-zero) images, NaN once a pixel moves."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        z = self.lin(x.flatten(1))
        return z + torch.where(x.flatten(1)[:, :1] > 0.01, float("nan"), 0.0)


def test_nan_logits_during_the_attack_are_refused_not_counted_as_breaks():
    model = _NanAwayFromClean()
    x = torch.zeros(4, 1, 8, 8)
    y = model(x).argmax(1)
    with pytest.raises(ValueError, match="NaN or infinite logits during the attack"):
        rl.eval.evaluate(model, (x, y), eps=0.1, checklist=False)
    with pytest.raises(ValueError, match="NaN or infinite logits"):
        rl.attacks.create("pgd", eps=0.1, steps=3)(model, x, y)


def test_progress_reports_every_step_of_a_long_attack(trained_model, digits):
    """A 2000-iteration attack must not be silent until its first samples finish:
    the callback fires after every cascade step, its model calls grow while no
    sample is done yet, and it ends with every sample done."""
    x, y = digits[0][:64], digits[1][:64]
    seen = []
    ev = rl.eval.evaluate(trained_model, (x, y), eps=16 / 255, protocol="thesis", checklist=False,
                          options={"steps": (10, 40)}, progress=seen.append)
    assert seen[-1]["done"] == ev.n == 64 and seen[-1]["active"] == 0
    before = [d for d in seen if d["done"] == 0]
    assert len(before) >= 10 and before[-1]["calls"] > before[0]["calls"]  # alive before the first result
    assert all(b["calls"] >= a["calls"] and b["done"] >= a["done"] for a, b in zip(seen, seen[1:]))


def test_progress_work_share_follows_model_evaluations_not_samples_finished(trained_model, digits):
    """Robust samples leave only after every attack, so the share of samples
    finished lags the work done by far more than the share of model
    evaluations estimated from the counts the callback gives."""
    x, y = digits[0][:240], digits[1][:240]
    seen = []
    ev = rl.eval.evaluate(trained_model, (x, y), eps=0.05, batch_size=32, checklist=False, options={"steps": 20},
                          progress=seen.append)
    assert 0.5 < ev.robust_accuracy < 1
    total = seen[-1]["evaluations"]
    assert seen[-1]["evaluations_left"] == 0 and work_done(seen[-1], 240) == 1.0
    by_work = max(abs(work_done(d, 240) - d["evaluations"] / total) for d in seen)
    by_samples = max(abs(d["done"] / 240 - d["evaluations"] / total) for d in seen)
    assert by_work < 0.05 < 0.1 < by_samples, (by_work, by_samples)


def test_progress_work_share_is_exact_when_every_sample_costs_the_same():
    x, y = torch.rand(40, 1, 4, 4), torch.zeros(40, dtype=torch.long)
    seen = []
    rl.eval.evaluate(Unbreakable(), (x, y), eps=0.01, batch_size=16, checklist=False, options=FAST,
                     progress=seen.append)
    total = seen[-1]["evaluations"]
    assert total == 40 * (11 + 11 + 6)  # APGD-CE and -margin of 10 steps, a targeted one of 5: steps + 1 each
    assert all(work_done(d, 40) == pytest.approx(d["evaluations"] / total, abs=1e-12) for d in seen)


def test_a_limit_on_class_sorted_data_warns_that_the_subset_is_not_a_sample(trained_model, digits):
    x, y = digits
    order = torch.argsort(y, stable=True)
    xs, ys = x[order], y[order]
    loader = DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=32)  # as an unshuffled ImageFolder
    ev = rl.eval.evaluate(trained_model, loader, eps=0.05, protocol="quick", checklist=False, limit=60)
    assert any(w.startswith("[data] the first 60 samples (limit=60) hold only 2 of the model's 10 classes")
               for w in ev.warnings), ev.warnings
    for data, limit in (((x, y), 60), ((xs, ys), None)):  # mixed classes; or the whole sorted set, no limit
        ev = rl.eval.evaluate(trained_model, data, eps=0.05, protocol="quick", checklist=False, limit=limit)
        assert not any(w.startswith("[data]") for w in ev.warnings), ev.warnings


def test_the_report_grid_shows_images_the_attacks_worked_on(trained_model, digits):
    """A class-sorted folder's first images may all be misclassified as they
    are: the grid takes the first correctly classified ones, and fills up
    with misclassified ones only when too few are correct."""
    x, y = digits[0][:40], digits[1][:40].clone()
    y[:10] = (y[:10] + 1) % 10  # wrong labels: misclassified as they are
    ev = rl.eval.evaluate(trained_model, (x, y), eps=0.1, protocol="quick", checklist=False)
    right = (rl.eval.metrics.predict(trained_model, x) == y).nonzero().flatten().tolist()
    assert ev.examples["index"].tolist() == right[:8] and min(right) >= 10
    assert float((ev.examples["adversarial"] - ev.examples["clean"]).abs().max()) > 0  # attacked images
    assert torch.equal(ev.examples["y"], y[ev.examples["index"]])  # the captions' label → prediction
    assert torch.equal(ev.examples["adv_pred"], rl.eval.metrics.predict(trained_model, ev.examples["adversarial"]))
    y[13:] = (y[13:] + 1) % 10  # now only images 10-12 are correct
    ev = rl.eval.evaluate(trained_model, (x, y), eps=0.1, protocol="quick", checklist=False)
    right = (rl.eval.metrics.predict(trained_model, x) == y).nonzero().flatten().tolist()
    assert right == [10, 11, 12] and ev.examples["index"].tolist() == [0, 1, 2, 3, 4, 10, 11, 12]


def test_a_shuffling_loader_without_a_seed_warns_and_cannot_be_resumed(trained_model, digits, tmp_path):
    ds = torch.utils.data.TensorDataset(digits[0][:40], digits[1][:40])
    loose = DataLoader(ds, batch_size=16, shuffle=True)
    ev = rl.eval.evaluate(trained_model, loose, eps=0.05, protocol="quick", checklist=False)
    assert ev.warnings[0].startswith("[data] the DataLoader shuffles with no seeded generator")
    with pytest.raises(ValueError, match=r"shuffle=True and no generator .* a resumed evaluation"):
        rl.eval.evaluate(trained_model, loose, eps=0.05, protocol="quick", state=tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()
    seeded = [rl.eval.evaluate(trained_model, DataLoader(ds, batch_size=16, shuffle=True,
                                                         generator=torch.Generator().manual_seed(3)),
                               eps=0.05, protocol="quick", checklist=False) for _ in range(2)]
    assert not any(w.startswith("[data]") for w in seeded[0].warnings)
    assert seeded[0].per_sample == seeded[1].per_sample  # a seeded shuffle is the same evaluation again


def test_integer_labels_of_any_width_and_half_images_evaluate_as_int64_and_float32(trained_model, digits):
    import numpy as np

    x, y = digits[0][:32], digits[1][:32]
    ref = rl.eval.evaluate(trained_model, (x, y), eps=0.05, protocol="quick", checklist=False)
    for labels in (y.int(), y.short(), y.to(torch.uint8)):
        ev = rl.eval.evaluate(trained_model, (x, labels), eps=0.05, protocol="quick", checklist=False)
        assert ev.per_sample == ref.per_sample
    loader = [(x, np.asarray(y, dtype=np.int32))]
    assert rl.eval.evaluate(trained_model, loader, eps=0.05, protocol="quick", checklist=False).per_sample \
        == ref.per_sample
    half = rl.eval.evaluate(trained_model, [(x.half(), y)], eps=0.05, protocol="quick", checklist=False)
    assert half.n == 32 and half.audit["within_budget"]


def test_the_checklist_skips_images_misclassified_as_they_are(trained_model, digits):
    """A misclassified image's loss cannot grow: counted, it flagged masking and ran Square for nothing."""
    x, y = digits[0][:40], digits[1][:40].clone()
    y[:8] = (y[:8] + 1) % 10
    for batch_size in (8, 16):  # the first batch all mislabelled, or half of it
        ev = rl.eval.evaluate(trained_model, (x, y), eps=0.05, batch_size=batch_size, options=FAST)
        assert ev.options["sanity"]["measurements"]["n"] == sum(ev.per_sample["clean_correct"]) <= 32
        assert not ev.fallback["used"]
    ev = rl.eval.evaluate(trained_model, (x[:8], y[:8]), eps=0.05, options=FAST)
    assert any(w.startswith("[checklist] none of the first 8 images") for w in ev.warnings)


def test_a_float64_or_half_model_is_evaluated_in_its_precision_on_float32_attacks(trained_model, digits):
    """A model in float64 or float16 was refused (its weights against float32 images); it now computes in its own
    precision: float64 gives float32's per-sample result, float16 the same clean accuracy within a sample or two;
    the user's model keeps its dtype and mode."""
    import copy

    x, y = digits[0][:64], digits[1][:64]
    kw = {"eps": 0.1, "options": FAST, "checklist": False, "seed": 1}
    ref = rl.eval.evaluate(trained_model, (x, y), **kw)
    double = copy.deepcopy(trained_model).double().train()
    ev = rl.eval.evaluate(double, (x, y), **kw)
    assert ev.per_sample["clean_correct"] == ref.per_sample["clean_correct"]
    assert abs(ev.robust_accuracy - ref.robust_accuracy) <= 2 / 64
    assert ev.audit["within_budget"] and next(double.parameters()).dtype == torch.float64 and double.training
    half = copy.deepcopy(trained_model).half()
    ev = rl.eval.evaluate(half, (x.half(), y), **kw)
    assert abs(ev.clean_accuracy - ref.clean_accuracy) <= 2 / 64 and ev.robust_accuracy < ev.clean_accuracy
    assert ev.audit["within_budget"] and next(half.parameters()).dtype == torch.float16
    # numpy's default float64 images were refused; they are evaluated as float32, with float32's result
    ev = rl.eval.evaluate(trained_model, (x.double().numpy(), y.numpy()), **kw)
    assert ev.per_sample == ref.per_sample


def test_half_precision_gradients_that_underflow_do_not_mask_the_default_protocol(trained_model, digits):
    """An over-confident float16 model (logits ×30, as an ImageNet model's can
    be): the cross-entropy's input gradient underflows to exactly zero for most
    images (gradient masking by precision alone), yet the default protocol,
    whose margin losses do not saturate, finds float32's robust accuracy;
    PGD on the cross-entropy alone does not, and the checklist flags it."""
    import copy

    class Scaled(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x) * 30

    x, y = digits[0][:128], digits[1][:128]
    ref = rl.eval.evaluate(trained_model, (x, y), eps=0.1, checklist=False)
    half = Scaled(copy.deepcopy(trained_model)).half().eval()
    xg = x.half().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(half(xg).float(), y), xg)
    assert int((g.flatten(1).abs().sum(1) == 0).sum()) >= 64  # the premise: most gradients are exactly zero
    ev = rl.eval.evaluate(half, (x, y), eps=0.1, checklist=False)
    assert abs(ev.clean_accuracy - ref.clean_accuracy) <= 2 / 128
    assert abs(ev.robust_accuracy - ref.robust_accuracy) <= 2 / 128 and ev.robust_accuracy < ev.clean_accuracy
    # PGD on the cross-entropy alone (quick) is masked by it, and the checklist says so
    quick = rl.eval.evaluate(half, (x, y), eps=0.1, protocol="quick")
    assert quick.robust_accuracy > ev.robust_accuracy + 0.2
    assert any(w.startswith("[unbounded]") for w in quick.warnings)


def test_samples_lists_and_numpy_pairs_evaluate_like_tensors(linear, digits):
    """A list of (image, label) samples, an (x, y) numpy pair or [x, y] list crashed (len() of a 0-d tensor,
    'batches must be (x, y) pairs; got ndarray'); they are read as the tensor pair they hold."""
    x, y = digits[0][:24], digits[1][:24]
    kw = {"eps": 0.05, "protocol": "quick", "checklist": False, "batch_size": 8}
    ref = rl.eval.evaluate(linear, (x, y), **kw).per_sample
    for data in ([(x[i], int(y[i])) for i in range(24)], [(x[i].numpy(), y[i].numpy()) for i in range(24)],
                 (x.numpy(), y.numpy()), [x, y], [(x.numpy(), y.tolist())]):
        assert rl.eval.evaluate(linear, data, **kw).per_sample == ref
    assert rl.eval.evaluate(linear, (x, y.tolist()), **kw).per_sample == ref
    one = rl.eval.evaluate(linear, (x[0], y[0]), **kw)  # a single (image, label)
    assert one.n == 1 and rl.eval.evaluate(linear, (x[:1], int(y[0])), **kw).per_sample == one.per_sample
    with pytest.raises(TypeError, match="data batch 0: batches must be .x, y. pairs of tensors"):
        rl.eval.evaluate(linear, [[(x[i], int(y[i])) for i in range(24)]], **kw)
    with pytest.raises(TypeError, match="got one image .1, 8, 8. and one label"):
        rl.eval.evaluate(linear, ((x[i], y[i]) for i in range(24)), **kw)  # a generator of samples


def test_more_data_forms_a_user_passes_are_read_or_named(linear, digits):
    """(x, y, index) triples, as lists of samples or as tensors, evaluate as (x, y); a dict of tensors, a list of
    images and a Dataset of PIL images are refused saying what to pass (a KeyError or default_collate's error came
    from inside torch)."""
    x, y = digits[0][:24], digits[1][:24]
    kw = {"eps": 0.05, "protocol": "quick", "checklist": False, "batch_size": 8}
    ref = rl.eval.evaluate(linear, (x, y), **kw).per_sample
    assert rl.eval.evaluate(linear, [(x[i], int(y[i]), i) for i in range(24)], **kw).per_sample == ref
    assert rl.eval.evaluate(linear, (x, y, torch.arange(24)), **kw).per_sample == ref
    with pytest.raises(TypeError, match=r"data: a dict \(keys \['image', 'label'\]\) is not \(x, y\)"):
        rl.eval.evaluate(linear, {"image": x, "label": y}, **kw)
    with pytest.raises(TypeError, match=r"x is a list of 24 images; stack them"):
        rl.eval.evaluate(linear, (list(x), y.tolist()), **kw)
    with pytest.raises(TypeError, match=r"DataLoader with batch_size=None\) is no batch"):
        rl.eval.evaluate(linear, zip(x, y), **kw)
    from PIL import Image

    class Pictures(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return Image.new("L", (8, 8)), 0

    with pytest.raises(TypeError, match=r"the Dataset yields PIL images.*transforms.ToTensor\(\)"):
        rl.eval.evaluate(linear, Pictures(), **kw)


def test_a_model_that_fails_on_the_images_is_told_what_to_change(digits):
    """Another input size gets the size advice; mixed-precision weights the precision one (every failure was
    told both)."""
    x, y = digits[0][:8], digits[1][:8]
    kw = {"eps": 0.05, "protocol": "quick", "checklist": False}
    wrong_size = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10))
    with pytest.raises(ValueError, match=r"fails on the data's \(1, 8, 8\) images .*their size: --image-size") as err:
        rl.eval.evaluate(wrong_size, (x, y), **kw)
    assert "precision" not in str(err.value)
    mixed = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Linear(16, 10).double())
    with pytest.raises(ValueError, match=r"weights of one precision \(model.float\(\)\)"):
        rl.eval.evaluate(mixed, (x, y), **kw)


def test_bad_values_late_in_memory_data_are_refused_before_any_attack(linear, digits):
    """A label or pixel out of range in the last image of in-memory data stopped the evaluation only after
    everything before it had been attacked; tensors and TensorDatasets are checked whole first."""
    x, y = digits[0][:64].clone(), digits[1][:64].clone()
    kw = {"eps": 0.05, "protocol": "quick", "checklist": False, "batch_size": 8}
    bad_y = y.clone()
    bad_y[-1] = 10
    bad_x = x.clone()
    bad_x[-1, 0, 0, 0] = 1.0000001
    for data, match in (((x, bad_y), "class index 10, out of range for a model with 10 classes"),
                        (torch.utils.data.TensorDataset(x, bad_y), "class index 10"),
                        ((bad_x, y), r"must lie in \[0, 1\].*got min 0, max 1.0000001")):
        model = Counting(linear)
        with pytest.raises(ValueError, match=match):
            rl.eval.evaluate(model, data, **kw)
        assert len(model.sizes) <= 3  # the first batch's checks, no attack
    # a limit that leaves the bad image out evaluates
    assert rl.eval.evaluate(linear, (x, bad_y), limit=63, **kw).n == 63


def test_data_that_is_valid_but_likely_wrong_is_warned(linear, digits):
    x, y = digits[0][:24], digits[1][:24]
    kw = {"protocol": "quick", "checklist": False, "batch_size": 8}
    twice = rl.eval.evaluate(linear, (x / 255, y), eps=0.05, **kw).warnings
    assert any("divided by 255 twice" in w for w in twice)
    dropped = rl.eval.evaluate(linear, DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10,
                                                  drop_last=True), eps=0.05, **kw)
    assert dropped.n == 20 and any("drop_last=True): 4 of 24 images are not evaluated" in w for w in dropped.warnings)
    whole = rl.eval.evaluate(linear, (x, y), eps=1, **kw).warnings
    assert any("ε = 255/255 (eps=1)" in w and "pass eps=1/255" in w for w in whole)
    assert not any(w.startswith(("[data]", "[budget]")) for w in rl.eval.evaluate(linear, (x, y), eps=0.05,
                                                                               **kw).warnings)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 3, 10))
    last = rl.eval.evaluate(flat, (x.repeat(1, 3, 1, 1).permute(0, 2, 3, 1), y), eps=0.05, **kw).warnings
    assert any("look channels-last (H, W, C)" in w for w in last)


class _Detached(nn.Module):
    """A model whose forward detaches its input (a linear probe on a frozen, no_grad backbone does the same)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.detach())


def test_a_model_without_input_gradients_is_flagged_and_attacked_by_square(trained_model, digits):
    """A detached input crashed inside autograd ('appears to not have been used in the graph'), in evaluate and in
    every attack: it is gradient masking in its plainest form. Its gradient now reads as zero, the checklist flags
    it, and the gradient-free fallback breaks it as it breaks the model itself."""
    x, y = digits[0][:64], digits[1][:64]
    masked = _Detached(trained_model)
    x_adv = rl.attacks.create("pgd", eps=0.1, steps=3)(masked, x[:8], y[:8])
    assert float((x_adv - x[:8]).abs().max()) <= 0.1 + 1e-6
    ev = rl.eval.evaluate(masked, (x, y), eps=0.1, options={**FAST, "queries": 500})
    assert ev.fallback["used"] and "masking checklist flagged" in ev.fallback["reason"]
    assert ev.per_attack["apgd-ce"] == ev.clean_accuracy  # no gradient: the gradient attacks change nothing
    assert ev.robust_accuracy < ev.clean_accuracy - 0.2  # Square does


def test_evaluate_and_the_attacks_work_under_a_callers_no_grad(trained_model, digits):
    """Inside torch.no_grad() (an eval loop's habit) evaluate and every attack failed: 'does not require grad'."""
    x, y = digits[0][:32], digits[1][:32]
    ref = rl.eval.evaluate(trained_model, (x, y), eps=0.1, options=FAST)
    pgd = rl.attacks.create("pgd", eps=0.1, steps=3, seed=0)
    x_ref = pgd(trained_model, x, y)
    with torch.no_grad():
        assert rl.eval.evaluate(trained_model, (x, y), eps=0.1, options=FAST).per_sample == ref.per_sample
        assert torch.equal(rl.attacks.create("pgd", eps=0.1, steps=3, seed=0)(trained_model, x, y), x_ref)
        assert rl.attacks.create("cw", steps=3)(trained_model, x[:4], y[:4]).shape == (4, 1, 8, 8)


def test_the_checklist_sees_the_same_first_images_whatever_the_batch_size():
    """The checklist took its images from the first batch only: with a first batch misclassified (batch_size=1) it
    did not run, no Square ran, and a quantized (zero-gradient) model's robust accuracy was overstated. It now
    takes the correctly classified ones of the first 100 images, in calls of at most batch_size."""
    x, y = rl.data.load_dataset("digits", "test").batch(slice(0, 48))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    xt, yt = rl.data.load_dataset("digits", "train").batch(slice(None))
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()

    class Quantized(nn.Module):  # 4 grey levels: zero gradient almost everywhere
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(torch.round(x * 3) / 3)

    model = Quantized()
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    x, y = torch.cat([x[wrong][:4], x[~wrong]]), torch.cat([y[wrong][:4], y[~wrong]])  # a first batch all wrong
    sizes = {}
    for bs in (4, 48):
        ev = rl.eval.evaluate(model, DataLoader(TensorDataset(x, y), batch_size=bs), eps=0.1,
                              options={**FAST, "queries": 200})
        sizes[bs] = (ev.fallback["used"], ev.options["sanity"]["measurements"]["n"], ev.robust_accuracy)
    assert sizes[4] == sizes[48] and sizes[4][0] and sizes[4][1] > 20, sizes


def test_ctrl_c_keeps_the_samples_done_and_the_same_call_resumes_after_them(linear, digits, tmp_path):
    """An interrupted evaluation kept nothing unless 30 s had passed since its last save."""
    x, y = digits[0][:128], digits[1][:128]
    kw = {"eps": 0.05, "options": FAST, "checklist": False, "batch_size": 16}
    full = rl.eval.evaluate(linear, (x, y), **kw)
    state = tmp_path / "state.json"
    steps = []

    def interrupt(counts):
        steps.append(counts["done"])
        if counts["done"] >= 40:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rl.eval.evaluate(linear, (x, y), state=state, progress=interrupt, **kw)
    saved = json.loads(state.read_text())["tally"]
    assert 40 <= len(saved["index"]) < 128 and len({len(saved[k]) for k in ("index", "stage", "recorded")}) == 1
    assert rl.eval.evaluate(linear, (x, y), state=state, **kw).per_sample == full.per_sample


def test_a_model_that_adapts_its_input_channels_itself_is_not_refused(trained_model, digits):
    """The channel check read the first registered nn.Conv2d and refused models that run: a grayscale wrapper
    expanding 1 channel to 3, or a model registering its head before its stem. It now speaks only when the
    model fails on the images."""

    class Gray(nn.Module):  # 3-channel network, fed 1-channel images
        def __init__(self):
            super().__init__()
            self.rgb = nn.Sequential(nn.Conv2d(3, 1, 1), trained_model)
            with torch.no_grad():
                self.rgb[0].weight.fill_(1 / 3)
                self.rgb[0].bias.zero_()

        def forward(self, x):
            return self.rgb(x.expand(-1, 3, -1, -1))

    x, y = digits[0][:32], digits[1][:32]
    ref = rl.eval.evaluate(trained_model, (x, y), eps=0.05, protocol="quick", checklist=False)
    assert rl.eval.evaluate(Gray(), (x, y), eps=0.05, protocol="quick", checklist=False).per_sample == ref.per_sample
    assert rl.attacks.create("pgd", eps=0.05, steps=2)(Gray(), x, y).shape == x.shape
    with pytest.raises(ValueError, match="data images has 3 channels .* first convolution takes 1"):
        rl.eval.evaluate(trained_model, (x.expand(-1, 3, -1, -1), y), eps=0.05, protocol="quick")


def test_batches_of_dicts_are_refused_with_the_pairs_to_pass(linear, digits):
    """A Hugging Face dataset's rows (dicts) are no (x, y) pairs: the error names
    the keys and shows the pairs to pass, with the image and label keys it has."""
    x, y = digits[0][:8], digits[1][:8]
    with pytest.raises(TypeError, match=r"got a dict with keys \['labels', 'pixel_values'\].*"
                                        r"\(\(b\['pixel_values'\], b\['labels'\]\) for b in loader\)"):
        rl.eval.evaluate(linear, [{"pixel_values": x, "labels": y}], eps=0.05, protocol="quick")
