"""The per-sample streaming cascade (robustlab.attacks.cascade): keyed
randomness, Square's schedule, APGD's checkpoints, the ε-ball of every
returned image, strength against torchattacks' APGD, final-iterate records."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from toy_models import Unbreakable

from robustlab.attacks.cascade import (
    SURVIVED,
    Cascade,
    Stage,
    _l2_square_step,
    _pseudo_gaussian,
    _window,
    apgd_checkpoints,
    keyed_uniform,
    model_forward,
    run_batch,
    square_fraction,
    wrong_classes_by_rank,
)

# -- keyed randomness ------------------------------------------------------------


def test_keyed_uniform_depends_only_on_key_and_salt():
    keys = torch.arange(10_000)
    u = keyed_uniform(keys, 4, salt=3)
    assert u.shape == (10_000, 4) and u.dtype == torch.float32
    assert bool((u >= 0).all()) and bool((u < 1).all())
    # Roughly uniform: mean 0.5 (sd of the mean of 40k uniforms ≈ 0.0014), and every decile populated.
    assert abs(float(u.mean()) - 0.5) < 0.01
    hist = torch.histc(u, bins=10, min=0, max=1)
    assert bool((hist > 0.08 * u.numel()).all()) and bool((hist < 0.12 * u.numel()).all())
    # The same keys in another batch (other neighbours, another order) draw the same values.
    perm = torch.randperm(10_000, generator=torch.Generator().manual_seed(0))[:500]
    other = keyed_uniform(torch.cat([keys[perm], torch.tensor([123_456_789])]), 4, salt=3)
    assert torch.equal(other[:500], u[perm])
    assert torch.equal(keyed_uniform(keys[7:8], 4, salt=3), u[7:8])
    # The salt and the key both matter; the columns are not copies of one another.
    assert not torch.equal(keyed_uniform(keys, 4, salt=4), u)
    assert (u[:-1] != u[1:]).float().mean() > 0.99
    assert (u[:, 0] != u[:, 1]).float().mean() > 0.99


# -- schedules -------------------------------------------------------------------


def autoattack_p(p_init: float, it: int, budget: int) -> float:
    """Square Attack's p_selection (Andriushchenko et al.; AutoAttack's square.py), written out."""
    it = int(it / budget * 10000)
    if 10 < it <= 50:
        return p_init / 2
    elif 50 < it <= 200:
        return p_init / 4
    elif 200 < it <= 500:
        return p_init / 8
    elif 500 < it <= 1000:
        return p_init / 16
    elif 1000 < it <= 2000:
        return p_init / 32
    elif 2000 < it <= 4000:
        return p_init / 64
    elif 4000 < it <= 6000:
        return p_init / 128
    elif 6000 < it <= 8000:
        return p_init / 256
    elif 8000 < it:
        return p_init / 512
    return p_init


SQUARE_ITS = [0, 10, 11, 50, 51, 200, 201, 500, 1000, 2000, 4000, 6000, 6001, 7000, 8000, 8001, 9999]


@pytest.mark.parametrize("budget", [10000, 5000])
def test_square_fraction_follows_the_autoattack_schedule(budget):
    its = [i * budget // 10000 for i in SQUARE_ITS] if budget != 10000 else SQUARE_ITS
    got = square_fraction(0.8, torch.tensor(its), budget).tolist()
    want = [autoattack_p(0.8, i, budget) for i in its]
    assert got == pytest.approx(want, rel=1e-9), list(zip(its, got, want))


def test_square_fraction_before_the_last_halvings():
    # The part of the schedule up to 6000 queries (of 10 000), and its rescaling to 5000.
    its = [0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 2000, 4000, 6000]
    got = square_fraction(0.8, torch.tensor(its), 10000).tolist()
    assert got == pytest.approx([autoattack_p(0.8, i, 10000) for i in its])
    half = square_fraction(0.8, torch.tensor([5, 6, 25, 26, 3000]), 5000).tolist()
    assert half == pytest.approx([0.8, 0.4, 0.4, 0.2, 0.8 / 128])


def test_apgd_checkpoints():
    assert apgd_checkpoints(100) == (22, 3, 6)
    assert apgd_checkpoints(1000) == (220, 30, 60)
    assert apgd_checkpoints(10) == (2, 1, 1)  # never an interval of 0


# -- stages ----------------------------------------------------------------------


def test_stage_refuses_unknown_kind_loss_and_target():
    with pytest.raises(ValueError, match="kind"):
        Stage("x", "fgsm", 10)
    with pytest.raises(ValueError, match="loss"):
        Stage("x", "apgd", 10, loss="hinge")
    with pytest.raises(ValueError, match="target"):
        Stage("x", "apgd", 10, target="least")
    with pytest.raises(ValueError, match="target_rank"):
        Stage("x", "apgd", 10, target="top")
    with pytest.raises(ValueError, match="steps"):
        Stage("x", "pgd", -1)
    with pytest.raises(ValueError, match="untargeted"):
        Stage("x", "square", 10, target="random")


def _predict(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 2.0)])
def test_square_stage_stays_in_the_ball_and_breaks(trained_model, digits, norm, eps):
    x, y = digits[0][:96], digits[1][:96]
    out = run_batch(model_forward(trained_model), x, y, [Stage("square", "square", 150)], eps=eps, norm=norm, seed=0)
    assert torch.equal(out.index, torch.arange(96))
    delta = (out.x_adv - x).flatten(1)
    if norm == "linf":
        assert float(delta.abs().amax()) <= eps + 1e-6
    else:
        assert float(delta.norm(dim=1).max()) <= eps + 1e-5
    assert float(out.x_adv.min()) >= 0 and float(out.x_adv.max()) <= 1
    assert not bool(torch.isnan(out.x_adv).any())
    assert torch.allclose(out.linf, delta.abs().amax(1)) and torch.allclose(out.l2, delta.norm(dim=1))
    clean_right = _predict(trained_model, x) == y
    broken = out.stage >= 0
    assert int(broken.sum()) >= 10, "Square breaks some images at this budget"
    # A broken sample's image is misclassified; a survivor's (its last query) is not.
    pred = _predict(trained_model, out.x_adv)
    assert bool((pred[broken] != y[broken]).all())
    assert bool((pred[~broken & clean_right] == y[~broken & clean_right]).all())
    assert bool((out.step[broken] >= 0).all()) and bool((out.step[~broken] == -1).all())
    assert bool((out.step[broken] <= 150).all())


def test_square_stage_is_keyed_per_sample(trained_model, digits):
    """A sample's Square run does not depend on its batch neighbours."""
    x, y = digits[0][:64], digits[1][:64]
    fwd = model_forward(trained_model)
    st = [Stage("square", "square", 60)]
    whole = run_batch(fwd, x, y, st, eps=0.2, seed=1)
    small = run_batch(fwd, x, y, st, eps=0.2, seed=1, capacity=8)
    assert torch.equal(whole.stage, small.stage) and torch.equal(whole.step, small.step)
    other_seed = run_batch(fwd, x, y, st, eps=0.2, seed=2)
    assert not torch.equal(other_seed.step, whole.step)


def _authors_rectangle(a: int, b: int) -> list[list[float]]:
    """``pseudo_gaussian_pert_rectangles`` of the Square Attack authors' code, written out."""
    delta = [[0.0] * b for _ in range(a)]
    xc, yc = a // 2 + 1, b // 2 + 1
    c0, c1 = xc - 1, yc - 1
    for k in range(max(xc, yc)):
        for i in range(max(c0, 0), min(c0 + 2 * k + 1, a)):
            for j in range(max(c1, 0), min(c1 + 2 * k + 1, b)):
                delta[i][j] += 1.0 / (k + 1) ** 2
        c0, c1 = c0 - 1, c1 - 1
    norm = sum(v * v for row in delta for v in row) ** 0.5
    return [[v / norm for v in row] for row in delta]


def _authors_meta(s: int) -> torch.Tensor:
    """``meta_pseudo_gaussian_pert`` (two halves of opposite sign, unit norm), written out."""
    rows = _authors_rectangle(s // 2, s) + [[-v for v in row] for row in _authors_rectangle(s - s // 2, s)]
    t = torch.tensor(rows, dtype=torch.float64)
    return (t / t.norm()).float()


@pytest.mark.parametrize("side", [2, 3, 4, 5, 7, 8, 11, 16])
def test_square_l2_bump_is_the_authors_pseudo_gaussian(side):
    r, q = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    for turned in (False, True):
        got = _pseudo_gaussian(torch.tensor([[[side]]]), r[None], q[None], torch.tensor([[[turned]]]))[0]
        want = _authors_meta(side).T if turned else _authors_meta(side)
        assert torch.allclose(got, want, atol=1e-6), (side, turned)
    # Outside its square the bump is zero.
    big = torch.arange(side + 4)
    rr, qq = torch.meshgrid(big - 2, big - 2, indexing="ij")
    out = _pseudo_gaussian(torch.tensor([[[side]]]), rr[None], qq[None], torch.tensor([[[False]]]))[0]
    inside = (rr >= 0) & (rr < side) & (qq >= 0) & (qq < side)
    assert bool((out[~inside] == 0).all()) and torch.allclose(out[inside].view(side, side), _authors_meta(side),
                                                               atol=1e-6)


def test_square_l2_step_keeps_the_budget_and_empties_the_second_window():
    torch.manual_seed(0)
    n, c, h, w, eps = 6, 3, 16, 16, 1.5
    x = torch.rand(n, c, h, w)
    d = torch.randn(n, c, h, w)
    best = x + d / d.flatten(1).norm(dim=1).view(n, 1, 1, 1) * eps
    u = torch.rand(n, 5)
    side = torch.full((n,), 5)
    sign = (torch.rand(n, c, 1, 1) < 0.5).float() * 2 - 1
    new = _l2_square_step(x, best, u, side, sign, eps)
    delta = new - x
    assert torch.allclose(delta.flatten(1).norm(dim=1), torch.full((n,), eps), atol=1e-5)
    w1 = _window(u[:, 0], u[:, 1], side, h, w)[:, None].expand(n, c, h, w)
    w2 = _window(u[:, 2], u[:, 3], side, h, w)[:, None].expand(n, c, h, w)
    assert bool((w1.flatten(1).sum(1) == 25 * c).all())
    # W2 (outside W1) is emptied; outside both windows δ keeps its direction (one common rescale per image).
    assert bool((delta[w2 & ~w1] == 0).all())
    rest = ~(w1 | w2)
    for i in range(n):
        m = rest[i]
        ratio = delta[i][m] / (best - x)[i][m]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)


def test_square_l2_at_least_as_strong_as_torchattacks(trained_model, digits):
    """Square L2 (Alg. 3) against the authors' algorithm as AutoAttack ships it (torchattacks' port), same budget."""
    torchattacks = pytest.importorskip("torchattacks")
    x, y = digits
    eps, queries = 1.0, 300
    ours = run_batch(model_forward(trained_model), x, y, [Stage("square", "square", queries)], eps=eps, norm="l2",
                     seed=0)
    assert float((ours.x_adv - x).flatten(1).norm(dim=1).max()) <= eps + 1e-5
    theirs = torchattacks.Square(trained_model, norm="L2", eps=eps, n_queries=queries, n_restarts=1, p_init=0.8,
                                 loss="margin", seed=0)(x, y)
    ours_robust = int((_predict(trained_model, ours.x_adv) == y).sum())
    theirs_robust = int((_predict(trained_model, theirs) == y).sum())
    assert theirs_robust > 0, "the budget leaves the reference something to fail on"
    assert ours_robust <= theirs_robust + 3, (ours_robust, theirs_robust)


def test_apgd_ce_at_least_as_strong_as_torchattacks(trained_model, digits):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = digits[0][:128], digits[1][:128]
    eps = 0.1
    ours = run_batch(model_forward(trained_model), x, y, [Stage("apgd-ce", "apgd", 20, loss="ce")], eps=eps, seed=0)
    ours_robust = int((ours.stage == SURVIVED).sum())
    assert float((ours.x_adv - x).abs().amax()) <= eps + 1e-6
    theirs = torchattacks.APGD(trained_model, eps=eps, steps=20, loss="ce", seed=0)(x, y)
    theirs_robust = int((_predict(trained_model, theirs) == y).sum())
    assert 5 < theirs_robust < 123, "the budget must leave the model partly robust for the comparison to mean anything"
    assert ours_robust <= theirs_robust + 2, (ours_robust, theirs_robust)


def test_pgd_without_early_stop_records_each_checkpoint(trained_model, digits):
    x, y = digits[0][:64], digits[1][:64]
    st = Stage("pgd", "pgd", 5, early_stop=False, record=(1, 5))
    out = run_batch(model_forward(trained_model), x, y, [st], eps=0.12, seed=0)
    assert out.recorded is not None and out.recorded.shape == (64, 2) and out.recorded.dtype == torch.bool
    survived = out.stage == SURVIVED
    assert 0 < int(survived.sum()) < 64
    # Correct at iterate 1 exactly when the sample was first misclassified after iterate 1 (or never).
    assert torch.equal(out.recorded[:, 0], survived | (out.step > 1))
    # A survivor is correct at every recorded iterate; the final-iterate record of the others is
    # checked against the model on the final iterate the attack would return with early stop off.
    assert bool(out.recorded[survived].all())
    assert bool((out.step[~survived] <= 5).all())


def test_a_stage_does_not_depend_on_its_place_in_the_cascade(trained_model, digits):
    """An APGD stage entered after another stage must run as it does when it is first.

    Both runs start from the clean image (no random start, so nothing is keyed on the
    stage's index); the first stage of the second cascade has no steps and breaks nothing.
    """
    x, y = digits[0][:128], digits[1][:128]
    fwd = model_forward(trained_model)
    apgd = Stage("apgd-margin", "apgd", 10, loss="cw", random_start=False)
    alone = run_batch(fwd, x, y, [apgd], eps=0.1)
    second = run_batch(fwd, x, y, [Stage("nothing", "pgd", 0, random_start=False), apgd], eps=0.1)
    assert int((second.stage == 0).sum()) == int((_predict(trained_model, x) != y).sum())
    # As strong in second place (the standard protocol's margin and targeted stages) as first.
    assert int((second.stage == SURVIVED).sum()) <= int((alone.stage == SURVIVED).sum()) + 2
    ok = second.stage != 0
    assert torch.equal((alone.stage == 0)[ok], (second.stage == 1)[ok])
    assert torch.equal(alone.step[ok], second.step[ok]), "the second stage lost its first iterate"


class _Scaled(nn.Module):
    def __init__(self, net: nn.Module, factor: float) -> None:
        super().__init__()
        self.net, self.factor = net, factor

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.net(x) * self.factor


@pytest.mark.parametrize("loss", ["cw", "dlr"])
def test_margin_stages_are_invariant_to_logit_scale(trained_model, digits, loss):
    """Sign steps of a scale-free objective: the same breaks, at the same iterations, for logits × 1e4."""
    x, y = digits[0][:128], digits[1][:128]
    st = [Stage("apgd", "apgd", 10, loss=loss)]
    plain = run_batch(model_forward(trained_model), x, y, st, eps=0.1, seed=0)
    scaled = run_batch(model_forward(_Scaled(trained_model, 1e4).eval()), x, y, st, eps=0.1, seed=0)
    assert 10 < int((plain.stage == SURVIVED).sum()) < 118
    assert int((scaled.stage == SURVIVED).sum()) <= int((plain.stage == SURVIVED).sum()) + 2
    assert (plain.step != scaled.step).sum() <= 2


# -- what is left to do ------------------------------------------------------------


def _three_stages() -> list[Stage]:
    return [Stage("pgd", "pgd", 4, loss="ce"), Stage("apgd", "apgd", 6, loss="cw"),
            Stage("t1", "apgd", 3, loss="cw", target="top", target_rank=1),
            Stage("t3", "apgd", 5, loss="cw", target="top", target_rank=3)]  # 3 classes: 2 wrong ones, skipped


def test_evaluations_left_counts_down_exactly_when_nothing_breaks():
    x, y = torch.rand(6, 1, 4, 4), torch.zeros(6, dtype=torch.long)
    model = Unbreakable()
    casc = Cascade(model_forward(model), _three_stages(), eps=0.01, capacity=6, num_classes=3)
    casc.feed(x, y, torch.arange(6), wrong_classes_by_rank(model(x), y))
    assert casc.evaluations_left() == 6 * ((4 + 1) + (6 + 1) + (3 + 1))  # the rank-3 stage cannot run
    left = [casc.evaluations_left()]
    while len(casc.pool):
        out = casc.step()
        left.append(casc.evaluations_left())
    assert out is not None and bool((out.stage == SURVIVED).all())
    assert left == list(range(left[0], -1, -6)) and casc.iterations == left[0]


def test_evaluations_left_bounds_what_samples_that_break_still_use(trained_model, digits):
    x, y = digits[0][:48], digits[1][:48]
    stages = [Stage("apgd-ce", "apgd", 8, loss="ce"), Stage("t1", "apgd", 5, loss="cw", target="top", target_rank=1)]
    with torch.no_grad():
        z = trained_model(x)
    casc = Cascade(model_forward(trained_model), stages, eps=0.1, capacity=48, num_classes=z.shape[1])
    casc.feed(x, y, torch.arange(48), wrong_classes_by_rank(z, y))
    broke = 0
    while len(casc.pool):
        before, used = casc.evaluations_left(), casc.iterations
        out = casc.step()
        broke += 0 if out is None else int((out.stage != SURVIVED).sum())
        assert casc.iterations - used + casc.evaluations_left() <= before  # never more than the bound said
    assert broke > 0 and casc.iterations < 48 * (9 + 6)
