"""A cascade of per-sample attack stages over a stream of samples.

The strong evaluation (AutoAttack, Croce & Hein 2020) runs several attacks,
each on the points the previous ones left robust. Run batch by batch, every
attack's batch shrinks as points break and the hardware idles on the rest.
Here each *slot* of a fixed-capacity pool carries one sample through the
stages on its own clock: a sample that breaks (or finishes its last stage)
leaves, and the next sample of the stream takes its slot, so every model call
is full, no call exceeds the capacity, and the cost follows the samples that
resist, not the batch size.

Stage kinds (one iteration = one model evaluation per slot):

* ``apgd``: APGD's step-size schedule (Croce & Hein 2020): η₀ = 2ε, momentum
  0.75, checkpoints every 22 % → 6 % of the budget where η halves and the
  iterate restarts from the best point if the loss rose in fewer than 75 % of
  the steps since the last checkpoint, or the best loss did not move.
* ``pgd``: fixed step α (§4.5/§6.3), sign (L∞) or normalized (L2) gradient.
* ``square``: Square Attack's score-based random search (Andriushchenko et
  al. 2020), L∞ and L2, gradient-free: what breaks a gradient-masked model.

Randomness is keyed per sample (seed, sample index, stage), so a sample's
result does not depend on which other samples share its model calls: the
same data give the same result in any batch size, and a resumed evaluation
repeats exactly the samples it redoes.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks.base import check_logits, input_gradient
from robustlab.attacks.threat import ThreatModel, create_threat

STAGE_KINDS = ("apgd", "pgd", "square")
CASCADE_LOSSES = ("ce", "cw", "dlr")
#: Sample outcome codes in :attr:`Outcome.stage`.
CLEAN_WRONG, SURVIVED = -2, -1


@dataclass(frozen=True)
class Stage:
    """One attack of a cascade.

    Args:
        name: what the results call it (``apgd-ce``, ``square``, ...).
        kind: ``apgd``, ``pgd`` or ``square``.
        steps: iterations (queries for ``square``).
        loss: ``ce``, ``cw`` (logit margin) or ``dlr`` (AutoAttack's
            difference of logits ratio); ``square`` always uses the margin.
        target: ``None`` (untargeted), ``"random"`` (a uniformly drawn wrong
            class, §4.6.1) or ``"top"`` with ``target_rank`` r ≥ 1 (the r-th
            most likely wrong class on the clean image, as APGD-T).
        step_size: α of ``pgd`` in pixel units (default 2.5·ε/steps).
        random_start: start from a random point of the ball (else the clean image).
        early_stop: retire a sample once misclassified (what robust accuracy
            needs); False runs every step (final-iterate scoring).
        record: iterations at which the iterate's correctness is recorded
            (final-iterate curves, §4.6.1).
        p_init: Square's initial fraction of pixels per square (0.8, AutoAttack).
    """

    name: str
    kind: str
    steps: int
    loss: str = "ce"
    target: str | None = None
    target_rank: int = 0
    step_size: float | None = None
    random_start: bool = True
    early_stop: bool = True
    record: tuple[int, ...] = ()
    p_init: float = 0.8

    def __post_init__(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"stage kind must be one of {STAGE_KINDS}; got {self.kind!r}")
        if self.loss not in CASCADE_LOSSES:
            raise ValueError(f"stage loss must be one of {CASCADE_LOSSES}; got {self.loss!r}")
        if self.target not in (None, "random", "top"):
            raise ValueError(f"stage target must be None, 'random' or 'top'; got {self.target!r}")
        if self.target == "top" and self.target_rank < 1:
            raise ValueError("a 'top' target needs target_rank >= 1")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"stage steps must be a whole number >= 0; got {self.steps!r}")
        if self.kind == "square" and self.target is not None:
            raise ValueError("the square stage is untargeted")


@dataclass
class Outcome:
    """What happened to the samples that left the cascade (one row each).

    ``stage``: index of the stage that broke the sample, :data:`SURVIVED` or
    :data:`CLEAN_WRONG`; ``step``: the iteration of that stage at which it
    first was misclassified (-1 if never). ``x_adv`` is the returned image:
    the first misclassified iterate, or the last one of a survivor."""

    index: Tensor
    stage: Tensor
    step: Tensor
    x_adv: Tensor
    linf: Tensor
    l2: Tensor
    recorded: Tensor | None = None  # (n, len(record)) correctness at the recorded iterations


# -- keyed randomness ------------------------------------------------------------

_P = 2147483647  # 2^31 - 1: products of two residues fit in int64


def keyed_uniform(keys: Tensor, count: int, salt: int = 0) -> Tensor:
    """(len(keys), count) uniforms in [0, 1) that depend only on each key and
    ``salt``: a vectorized counter-based hash (minstd rounds), so a sample's
    draws never depend on the other samples of its batch."""
    h = (keys.long() * 69069 + salt * 1103515245 + 12345) % _P
    j = torch.arange(1, count + 1, device=keys.device, dtype=torch.long)
    h = (h[:, None] * 16807 + j[None, :] * 48271 + 1) % _P
    for mult in (48271, 69621, 16807):
        h = (h * mult) % _P
        h = (h ^ (h >> 13)) % _P
    return h.double().div_(_P).to(torch.float32)


def sample_seed(seed: int, index: int, stage: int) -> int:
    return (seed * 1_000_003 + index * 7919 + stage * 104_729 + 17) % (2**62)


# -- losses ----------------------------------------------------------------------

def _other_max(z: Tensor, label: Tensor) -> Tensor:
    """max_{j≠label} z_j, the label masked with -inf: cannot saturate at any logit scale."""
    return z.scatter(1, label[:, None], float("-inf")).amax(1)


def margin(z: Tensor, y: Tensor) -> Tensor:
    """z_y − max_{j≠y} z_j (< 0: misclassified)."""
    return z.gather(1, y[:, None]).squeeze(1) - _other_max(z, y)


def _dlr(z: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """AutoAttack's DLR loss (to maximize), untargeted or targeted at ``target``."""
    s = z.sort(dim=1, descending=True).values
    zy = z.gather(1, y[:, None]).squeeze(1)
    if target is None:
        return -(zy - _other_max(z, y)) / (s[:, 0] - s[:, 2] + 1e-12)
    zt = z.gather(1, target[:, None]).squeeze(1)
    return -(zy - zt) / (s[:, 0] - 0.5 * (s[:, 2] + s[:, 3]) + 1e-12)


def stage_loss(name: str, z: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Per-sample objective to maximize; targeted losses move towards ``target``."""
    if name == "dlr":
        return _dlr(z, y, target)
    if target is None:
        return F.cross_entropy(z, y, reduction="none") if name == "ce" else -margin(z, y)
    return -F.cross_entropy(z, target, reduction="none") if name == "ce" else margin(z, target)


def wrong_classes_by_rank(z: Tensor, y: Tensor) -> Tensor:
    """(N, K−1): each sample's wrong classes, most likely first (APGD-T's targets)."""
    return z.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)[:, : max(z.shape[1] - 1, 1)]


def square_fraction(p_init: float, it: Tensor, budget: int) -> Tensor:
    """Square's schedule of p, the fraction of the image one square covers:
    halved at queries 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a
    10 000-query budget, rescaled to ``budget`` (Andriushchenko et al.)."""
    scaled = (it.double() / max(budget, 1) * 10000).long()
    marks = torch.tensor([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000], device=it.device)
    halvings = (scaled[:, None] > marks[None, :]).sum(1)
    return p_init / (2.0 ** halvings.double())


def apgd_checkpoints(steps: int) -> tuple[int, int, int]:
    """(first interval, shrink per checkpoint, least interval) of APGD: 22 %, 3 %, 6 %."""
    return max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)


# -- the pool --------------------------------------------------------------------

@dataclass
class _Pool:
    """The active slots, one row per sample, as parallel tensors."""

    t: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return 0 if "idx" not in self.t else int(self.t["idx"].shape[0])

    def keep(self, mask: Tensor) -> None:
        self.t = {k: v[mask] for k, v in self.t.items()}

    def add(self, rows: dict[str, Tensor]) -> None:
        if not self.t:
            self.t = dict(rows)
        else:
            self.t = {k: torch.cat([self.t[k], rows[k]]) for k in self.t}


class Cascade:
    """Run ``stages`` over samples streamed through a pool of ``capacity`` slots.

    ``forward(x) -> logits`` is the model in inference mode; it is never
    called with more than ``capacity`` images. Samples enter with
    :meth:`feed` (already known to be correctly classified, with their
    clean logits' top wrong classes) and leave through the ``on_done``
    callback as :class:`Outcome` rows.
    """

    def __init__(self, forward: Callable[[Tensor], Tensor], stages: list[Stage], *, eps: float, norm: str = "linf",
                 capacity: int, seed: int = 0, num_classes: int | None = None) -> None:
        if not stages:
            raise ValueError("a cascade needs at least one stage")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1; got {capacity}")
        self.forward = forward
        self.stages = stages
        self.threat: ThreatModel = create_threat(norm, eps)
        self.eps = self.threat.eps
        self.capacity = int(capacity)
        self.seed = int(seed)
        self.num_classes = num_classes
        self.pool = _Pool()
        self.records = max((len(s.record) for s in stages), default=0)
        self.iterations = 0  # model evaluations summed over slots
        self.calls = 0
        self._tables: dict[torch.device, dict[str, Tensor]] = {}

    def table(self, name: str, device: torch.device) -> Tensor:
        """A per-stage constant (indexed by stage id) on ``device``: ``kind``,
        ``early``, ``budget``, ``records``, ``apgd``, ``untargeted_or_random``,
        ``interval``. Built once per device, not at every step."""
        if device not in self._tables:
            st = self.stages
            self._tables[device] = {
                "kind": torch.tensor([STAGE_KINDS.index(s.kind) for s in st], device=device),
                "early": torch.tensor([s.early_stop for s in st], device=device),
                "budget": torch.tensor([s.steps for s in st], device=device),
                "records": torch.tensor([bool(s.record) for s in st], device=device),
                "apgd": torch.tensor([s.kind == "apgd" for s in st], device=device),
                "untargeted_or_random": torch.tensor([s.target != "top" for s in st], device=device),
                "interval": torch.tensor([apgd_checkpoints(s.steps)[0] for s in st], device=device),
            }
        return self._tables[device][name]

    # -- entering and leaving -----------------------------------------------

    def _start_stage(self, rows: dict[str, Tensor], stage_ids: Tensor) -> None:
        """(Re)initialize the state of ``rows`` for their stage in ``stage_ids``."""
        x, n = rows["x"], rows["x"].shape[0]
        x_adv = x.clone()
        for sid in stage_ids.unique().tolist():
            if self.stages[sid].kind == "square":
                at = (stage_ids == sid).nonzero().flatten()
                x_adv[at] = self._square_init(x[at], rows["idx"][at], sid)
        for i in range(n):
            st = self.stages[int(stage_ids[i])]
            if st.kind == "square":
                continue
            if st.random_start:
                gen = torch.Generator(device=x.device).manual_seed(
                    sample_seed(self.seed, int(rows["idx"][i]), int(stage_ids[i])))
                delta = self.threat.random_delta(x[i: i + 1], gen)
                x_adv[i] = (x[i: i + 1] + delta).clamp(*self._box(x[i: i + 1]))[0]
        zeros = torch.zeros(n, device=x.device)
        rows.update(
            stage=stage_ids.clone(), it=torch.zeros(n, dtype=torch.long, device=x.device), x_adv=x_adv,
            broke_step=torch.full((n,), -1, dtype=torch.long, device=x.device),
            rec=torch.zeros(n, max(self.records, 1), dtype=torch.bool, device=x.device),
            x_old=x_adv.clone(), grad=torch.zeros_like(x), x_best=x_adv.clone(), grad_best=torch.zeros_like(x),
            loss_best=zeros.clone(), loss_prev=zeros.clone(),
            eta=torch.full((n,), 2 * self.eps, device=x.device),
            since=torch.zeros(n, dtype=torch.long, device=x.device),
            interval=self.table("interval", x.device)[stage_ids],
            n_incr=torch.zeros(n, dtype=torch.long, device=x.device), best_last=zeros.clone(),
            reduced_last=torch.ones(n, dtype=torch.bool, device=x.device),
            x_broken=x_adv.clone(), sq_margin=torch.full((n,), float("inf"), device=x.device),
            loss_now=zeros.clone(),
        )

    def feed(self, x: Tensor, y: Tensor, idx: Tensor, top: Tensor) -> None:
        """Admit samples (all correctly classified); ``top`` (n, k): their most
        likely wrong classes on the clean image, best first."""
        rows = {"x": x, "y": y, "idx": idx, "targets": self._targets(y, idx, top)}
        start = self._next_stage(torch.full((len(y),), -1, dtype=torch.long, device=x.device), rows["targets"])
        keep = start < len(self.stages)  # (a cascade of 'top' stages only, with too few classes)
        rows = {k: v[keep] for k, v in rows.items()}
        if len(rows["y"]):
            self._start_stage(rows, start[keep])
            self.pool.add(rows)

    def _next_stage(self, stage: Tensor, targets: Tensor) -> Tensor:
        """The next stage of each row after ``stage``, skipping 'top' stages
        without a target (fewer classes than targets); len(stages): none left."""
        nxt = stage + 1
        usable = self.table("untargeted_or_random", stage.device)[None, :] | (targets >= 0)
        for _ in range(len(self.stages)):
            clipped = nxt.clamp(max=len(self.stages) - 1)
            bad = (nxt < len(self.stages)) & ~usable.gather(1, clipped[:, None]).squeeze(1)
            if not bool(bad.any()):
                break
            nxt = nxt + bad.long()
        return nxt

    def _targets(self, y: Tensor, idx: Tensor, top: Tensor) -> Tensor:
        """(n, stages) target class per stage (-1: untargeted)."""
        out = torch.full((len(y), len(self.stages)), -1, dtype=torch.long, device=y.device)
        for s, st in enumerate(self.stages):
            if st.target == "top":
                if st.target_rank > top.shape[1]:
                    continue  # fewer classes than targets: the stage is skipped for these samples
                out[:, s] = top[:, st.target_rank - 1]
            elif st.target == "random":
                k = self.num_classes or int(top.shape[1]) + 1
                shift = 1 + (keyed_uniform(idx, 1, salt=self.seed * 31 + s)[:, 0] * (k - 1)).long().clamp_(max=k - 2)
                out[:, s] = (y + shift) % k
        return out

    @property
    def free(self) -> int:
        return self.capacity - len(self.pool)

    def evaluations_left(self) -> int:
        """At most how many model evaluations (summed over slots, as
        :attr:`iterations`) the samples now in the pool still need: each runs
        the rest of its stage and every later stage it can run, none breaking.
        A stage of ``steps`` iterations costs ``steps + 1`` evaluations (its
        start, then one after each step)."""
        t = self.pool.t
        if not len(self.pool):
            return 0
        dev = t["stage"].device
        cost = self.table("budget", dev) + 1
        usable = self.table("untargeted_or_random", dev)[None, :] | (t["targets"] >= 0)
        later = torch.arange(len(self.stages), device=dev)[None, :] > t["stage"][:, None]
        rest = (cost[None, :] * (usable & later)).sum(1)
        return int((cost[t["stage"]] - t["it"] + rest).sum())

    # -- one iteration ------------------------------------------------------

    def _box(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.threat.box(x)

    def step(self) -> Outcome | None:
        """One model evaluation for every slot, then each slot's update; returns
        the samples that left the cascade (or None)."""
        t = self.pool.t
        n = len(self.pool)
        if n == 0:
            return None
        is_sq = self.table("kind", t["x"].device)[t["stage"]] == STAGE_KINDS.index("square")
        logits = self._evaluate(t, is_sq)
        if not bool(torch.isfinite(logits).all()):  # a NaN logit's argmax would read as a broken image
            bad = t["idx"][~torch.isfinite(logits).all(1)][:5].tolist()
            raise ValueError(f"the model returned NaN or infinite logits during the attack (images {bad}); "
                             "robust accuracy cannot be measured on such outputs")
        self.iterations += n
        wrong = logits.argmax(1) != t["y"]
        for s, st in enumerate(self.stages):
            rows = (t["stage"] == s).nonzero().squeeze(1)
            if rows.numel():
                self._update(st, rows, logits, wrong)
        # first misclassified iterate of the stage: kept as the adversarial image
        first = wrong & (t["broke_step"] < 0)
        t["broke_step"] = torch.where(first, t["it"], t["broke_step"])
        if bool(first.any()):
            t["x_broken"][first] = t["x_adv"][first]
        early = self.table("early", wrong.device)[t["stage"]]
        budget = self.table("budget", wrong.device)[t["stage"]]
        stuck = self._fixed_point(is_sq, early, wrong)
        if bool(stuck.any()):  # nothing can move them again in this stage: on to the next
            t["it"] = torch.where(stuck, budget, t["it"])
        broken = (t["broke_step"] >= 0) & (early | (t["it"] >= budget))
        finished = (t["it"] >= budget) & ~broken
        nxt = self._next_stage(t["stage"], t["targets"])
        leave = broken | (finished & (nxt >= len(self.stages)))
        advance = finished & ~leave
        out = self._leave(leave, broken) if bool(leave.any()) else None
        moving = ~leave & ~advance  # a row entering its next stage is evaluated at its start first
        if bool(advance.any()):
            self._advance(advance, nxt)
        if out is not None:
            self.pool.keep(~leave)
            moving = moving[~leave]
        if bool(moving.any()):
            self._move(moving)
        return out

    def _fixed_point(self, is_sq: Tensor, early: Tensor, wrong: Tensor) -> Tensor:
        """Rows whose iterate can never change again in their stage: the input
        gradient is exactly zero (a masked or saturated model), the last step
        did not move it (so APGD's momentum term is zero too) and it is its
        stage's best point (so no checkpoint can send it back elsewhere):
        every later step lands on the same point and repeats its evaluation. Skipping the rest of the stage
        changes no result; stages that record the iterate's correctness at
        fixed iterations run on."""
        t = self.pool.t
        cand = ~is_sq & early & ~wrong
        cand &= ~self.table("records", cand.device)[t["stage"]]
        if not bool(cand.any()):
            return cand
        rows = cand.nonzero().squeeze(1)
        zero = t["grad"][rows].flatten(1).abs().amax(1) == 0
        zero &= (t["x_adv"][rows] - t["x_old"][rows]).flatten(1).abs().amax(1) == 0
        apgd = self.table("apgd", cand.device)[t["stage"][rows]]
        zero &= ~apgd | ((t["x_adv"][rows] - t["x_best"][rows]).flatten(1).abs().amax(1) == 0)
        out = torch.zeros_like(cand)
        out[rows] = zero
        return out

    def _evaluate(self, t: dict[str, Tensor], is_sq: Tensor) -> Tensor:
        """Logits of every slot's current iterate; gradients of its stage's loss
        for the gradient stages (one backward for all of them)."""
        n = t["x"].shape[0]
        grad_rows = (~is_sq).nonzero().squeeze(1)
        sq_rows = is_sq.nonzero().squeeze(1)
        logits: Tensor | None = None
        if grad_rows.numel():
            xg = t["x_adv"][grad_rows].detach().requires_grad_(True)
            with torch.enable_grad():
                zg = self.forward(xg)
                loss = self._losses(zg, t, grad_rows)
                grad = input_gradient(loss.sum(), xg)
            self.calls += 1
            t["grad"][grad_rows] = grad
            t["loss_now"] = torch.zeros(n, device=zg.device)
            t["loss_now"][grad_rows] = loss.detach().float()
            logits = zg.new_empty((n, zg.shape[1]))
            logits[grad_rows] = zg.detach()
        if sq_rows.numel():
            with torch.no_grad():
                zs = self.forward(t["x_adv"][sq_rows])
            self.calls += 1
            if logits is None:
                logits = zs.new_empty((n, zs.shape[1]))
            logits[sq_rows] = zs
        assert logits is not None
        return logits.float()

    def _losses(self, z: Tensor, t: dict[str, Tensor], rows: Tensor) -> Tensor:
        stage = t["stage"][rows]
        out = torch.zeros(rows.numel(), device=z.device, dtype=z.dtype)
        for s in stage.unique().tolist():
            st = self.stages[s]
            m = stage == s
            target = None if st.target is None else t["targets"][rows[m], s]
            out[m] = stage_loss(st.loss, z[m], t["y"][rows[m]], target).to(z.dtype)
        return out

    def _update(self, st: Stage, rows: Tensor, logits: Tensor, wrong: Tensor) -> None:
        t = self.pool.t
        it = t["it"][rows]
        if st.record:
            rec = torch.tensor(st.record, device=it.device)
            hit = it[:, None] == rec[None, :]
            right = (~wrong[rows])[:, None] & hit
            t["rec"][rows, : len(st.record)] |= right
        if st.kind == "apgd":
            self._apgd_bookkeeping(st, rows, it)
        elif st.kind == "square":
            m = margin(logits[rows], t["y"][rows])
            better = (m < t["sq_margin"][rows]) | (it == 0)
            r = rows[better]
            t["sq_margin"][r] = m[better]
            t["x_best"][r] = t["x_adv"][r]

    def _apgd_bookkeeping(self, st: Stage, rows: Tensor, it: Tensor) -> None:
        """Best-point tracking and the checkpoint rule of APGD (Croce & Hein 2020, §3.1)."""
        t = self.pool.t
        loss = t["loss_now"][rows]
        first = it == 0
        improved = (loss > t["loss_best"][rows]) | first
        r = rows[improved]
        t["loss_best"][r] = loss[improved]
        t["x_best"][r] = t["x_adv"][r]
        t["grad_best"][r] = t["grad"][r]
        t["best_last"][rows[first]] = loss[first]
        t["n_incr"][rows] += ((loss > t["loss_prev"][rows]) & ~first).long()
        t["loss_prev"][rows] = loss
        t["since"][rows] += (~first).long()
        check = (t["since"][rows] >= t["interval"][rows]) & ~first
        if not bool(check.any()):
            return
        c = rows[check]
        k = t["interval"][c]
        oscillates = t["n_incr"][c].float() <= 0.75 * k.float()
        stalled = ~t["reduced_last"][c] & (t["best_last"][c] >= t["loss_best"][c])
        reduce = oscillates | stalled
        t["reduced_last"][c] = reduce
        t["best_last"][c] = t["loss_best"][c]
        rr = c[reduce]
        t["eta"][rr] /= 2
        t["x_adv"][rr] = t["x_best"][rr]
        t["grad"][rr] = t["grad_best"][rr]
        t["since"][c] = 0
        t["n_incr"][c] = 0
        _, shrink, least = apgd_checkpoints(st.steps)
        t["interval"][c] = (k - shrink).clamp_(min=least)

    def _advance(self, mask: Tensor, nxt: Tensor) -> None:
        """Rows that survived their stage start the next one, keeping their records."""
        t = self.pool.t
        rows = mask.nonzero().squeeze(1)
        sub = {k: t[k][rows] for k in ("x", "y", "idx", "targets")}
        self._start_stage(sub, nxt[rows])
        rec_keep = t["rec"][rows]
        for k, v in sub.items():
            t[k][rows] = v
        t["rec"][rows] = rec_keep

    def _leave(self, leave: Tensor, broken: Tensor) -> Outcome:
        t = self.pool.t
        rows = leave.nonzero().squeeze(1)
        b = broken[rows]
        x_ret = torch.where(b.view(-1, 1, 1, 1), t["x_broken"][rows], t["x_adv"][rows])
        delta = (x_ret - t["x"][rows]).flatten(1)
        return Outcome(
            index=t["idx"][rows], stage=torch.where(b, t["stage"][rows], torch.full_like(rows, SURVIVED)),
            step=torch.where(b, t["broke_step"][rows], torch.full_like(rows, -1)), x_adv=x_ret,
            linf=delta.abs().amax(1), l2=delta.norm(dim=1),
            recorded=t["rec"][rows] if self.records else None,
        )

    # -- moving the iterates ------------------------------------------------

    @torch.no_grad()
    def _move(self, moving: Tensor) -> None:
        """One step of every ``moving`` row's stage."""
        t = self.pool.t
        t["it"] += moving.long()
        for s, st in enumerate(self.stages):
            rows = ((t["stage"] == s) & moving).nonzero().squeeze(1)
            if not rows.numel():
                continue
            if st.kind == "square":
                t["x_adv"][rows] = self._square_proposal(st, rows)
                continue
            x, x_adv, grad = t["x"][rows], t["x_adv"][rows], t["grad"][rows]
            box = self._box(x)
            d = self.threat.direction(grad)
            if st.kind == "pgd":
                alpha = st.step_size if st.step_size is not None else 2.5 * self.eps / max(st.steps, 1)
                t["x_old"][rows] = x_adv
                t["x_adv"][rows] = self.threat.project(x_adv + alpha * d, x, box)
                continue
            eta = t["eta"][rows].view(-1, *([1] * (x.dim() - 1)))
            z = self.threat.project(x_adv + eta * d, x, box)
            a = torch.where(t["it"][rows] == 1, 1.0, 0.75).view_as(eta)
            x_new = self.threat.project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - t["x_old"][rows]), x, box)
            t["x_old"][rows] = x_adv
            t["x_adv"][rows] = x_new

    def _square_init(self, x: Tensor, idx: Tensor, stage: int) -> Tensor:
        """Square's start. L∞: vertical stripes of ±ε. L2: a grid of
        pseudo-Gaussian bumps of side h/5 with a random sign per channel and
        bump, scaled to ‖δ‖₂ = ε (Andriushchenko et al., Alg. 3)."""
        n, c, h, w = x.shape
        if self.threat.name == "linf":
            u = keyed_uniform(idx, c * w, salt=self.seed * 131 + stage)
            sign = ((u.view(n, c, 1, w) < 0.5).float() * 2 - 1).expand(n, c, h, w)
            return (x + self.eps * sign).clamp(0, 1)
        side = max(min(h, w) // 5, 1)
        start = (h - 5 * side) // 2
        rows, cols = max(h // side, 1), max(w // side, 1)
        u = keyed_uniform(idx, rows * cols * (c + 1), salt=self.seed * 131 + stage).view(n, rows * cols, c + 1)
        # Each pixel's bump (tiles of side s from `start`, as the authors' loops) and its place in it.
        i = torch.arange(h, device=x.device)[:, None] - start
        j = torch.arange(w, device=x.device)[None, :] - start
        br, bc = i.div(side, rounding_mode="floor"), j.div(side, rounding_mode="floor")
        tiled = (i >= 0) & (j >= 0) & (br < rows) & (bc < cols)
        bump = (br.clamp(0, rows - 1) * cols + bc.clamp(0, cols - 1)).expand(h, w).reshape(-1)
        draws = u[:, bump].view(n, h, w, c + 1)
        local = torch.arange(side, device=x.device)
        base = _pseudo_gaussian(torch.full((1, 1, 1), side, device=x.device), local[None, :, None],
                                local[None, None, :], torch.zeros(1, 1, 1, dtype=torch.bool, device=x.device))[0]
        r, q = (i - br * side).clamp(0, side - 1).expand(h, w), (j - bc * side).clamp(0, side - 1).expand(h, w)
        shape = torch.where(draws[..., 0] < 0.5, base.T[r, q], base[r, q]) * tiled
        sign = (draws[..., 1:] < 0.5).float().permute(0, 3, 1, 2) * 2 - 1
        delta = shape[:, None] * sign
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(n, 1, 1, 1)
        return self.threat.project(x + delta / norm * self.eps, x, self._box(x))

    def _square_proposal(self, st: Stage, rows: Tensor) -> Tensor:
        """The next query from the best point: L∞ redraws one random square
        per image at ±ε; L2 moves the mass of a second window into a fresh
        pseudo-Gaussian square (:func:`_l2_square_step`)."""
        t = self.pool.t
        x, best, it = t["x"][rows], t["x_best"][rows], t["it"][rows]
        n, c, h, w = x.shape
        p = square_fraction(st.p_init, it, st.steps)
        key = t["idx"][rows] * 100_003 + it
        u = keyed_uniform(key, 5 + c, salt=self.seed * 977 + int(t["stage"][rows[0]]))
        box = self._box(x)
        if self.threat.name == "linf":  # u: top, left, a sign per channel
            sign = ((u[:, 2: 2 + c] < 0.5).float() * 2 - 1).view(n, c, 1, 1)
            side = (p * h * w).sqrt().round().long().clamp_(min=1, max=max(min(h, w) - 1, 1))
            inside = _window(u[:, 0], u[:, 1], side, h, w)[:, None]
            return self.threat.project(torch.where(inside, x + self.eps * sign, best), x, box)
        # Alg. 3: side ≥ 3 and odd, strictly inside the image (randint(0, h − s) in the authors' code).
        side = (p * h * w).sqrt().round().long().clamp_(min=3)
        side = side + (side % 2 == 0).long()
        side = torch.minimum(side, torch.full_like(side, max(min(h, w) - 1, 1)))
        sign = ((u[:, 5:] < 0.5).float() * 2 - 1).view(n, c, 1, 1)  # u: W₁, W₂, transpose, a sign per channel
        return self.threat.project(_l2_square_step(x, best, u, side, sign, self.eps), x, box)


def _corner(u_top: Tensor, u_left: Tensor, side: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """(top, left) of one square per image, of side ``side``, at a position drawn from the uniforms."""
    return ((u_top * (h - side + 1).float()).long().clamp_(min=0),
            (u_left * (w - side + 1).float()).long().clamp_(min=0))


def _window(u_top: Tensor, u_left: Tensor, side: Tensor, h: int, w: int) -> Tensor:
    """(n, h, w) masks of the squares :func:`_corner` places."""
    top, left = _corner(u_top, u_left, side, h, w)
    ar_h = torch.arange(h, device=side.device)[None, :, None]
    ar_w = torch.arange(w, device=side.device)[None, None, :]
    s3 = side.view(-1, 1, 1)
    return ((ar_h >= top.view(-1, 1, 1)) & (ar_h < top.view(-1, 1, 1) + s3)
            & (ar_w >= left.view(-1, 1, 1)) & (ar_w < left.view(-1, 1, 1) + s3))


def _pseudo_gaussian(side: Tensor, r: Tensor, q: Tensor, transpose: Tensor) -> Tensor:
    """Square L2's perturbation of a square of ``side`` s at local coordinates
    (r, q) (0 outside the square), per image: two s/2 × s rectangles of
    opposite sign, each a sum of nested rectangles around its centre with
    weights 1/(k+1)², normalized to unit L2 norm together (the authors'
    ``meta_pseudo_gaussian_pert``); ``transpose`` turns it by 90°."""
    r, q = torch.where(transpose, q, r), torch.where(transpose, r, q)
    half = side // 2
    inside = (r >= 0) & (q >= 0) & (r < side) & (q < side)
    upper = r < half
    rows = torch.where(upper, half, side - half)
    rr = torch.where(upper, r, r - half)
    d = torch.maximum((rr - rows // 2).abs(), (q - side // 2).abs())
    # weight of a pixel at Chebyshev distance d: sum_{k=d}^{s/2} 1/(k+1)² (nested rectangles k = 0 … s/2)
    k = torch.arange(1, int(side.max()) + 2, device=side.device, dtype=torch.float32)
    tails = torch.cat([torch.zeros(1, device=side.device), (1 / k**2).cumsum(0)])
    val = (tails[(half + 1).expand_as(d).clamp(max=len(tails) - 1)] - tails[d.clamp(0, len(tails) - 1)])
    val = torch.where(inside, val, torch.zeros_like(val))
    dims = tuple(range(1, val.dim()))
    norm_up = (val * upper).pow(2).sum(dims, keepdim=True).sqrt().clamp_min(1e-12)
    norm_low = (val * ~upper).pow(2).sum(dims, keepdim=True).sqrt().clamp_min(1e-12)
    return torch.where(upper, val / norm_up, -val / norm_low) / math.sqrt(2)


def _l2_square_step(x: Tensor, best: Tensor, u: Tensor, side: Tensor, sign: Tensor, eps: float) -> Tensor:
    """Square L2's update (Andriushchenko et al. 2020, Alg. 3, as the authors'
    code): per channel, the square W₁ gets a fresh ±pseudo-Gaussian bump plus
    its old perturbation (unit-normalized), rescaled to the energy of W₁ ∪ W₂
    plus the budget left; W₂ is emptied; the whole δ is then rescaled to
    ‖δ‖₂ = ε."""
    n, c, h, w = x.shape
    delta = best - x
    w1 = _window(u[:, 0], u[:, 1], side, h, w)[:, None]
    w2 = _window(u[:, 2], u[:, 3], side, h, w)[:, None]
    ar_h = torch.arange(h, device=x.device)[None, :, None]
    ar_w = torch.arange(w, device=x.device)[None, None, :]
    top, left = _corner(u[:, 0], u[:, 1], side, h, w)
    bump = _pseudo_gaussian(side.view(n, 1, 1), ar_h - top.view(n, 1, 1), ar_w - left.view(n, 1, 1),
                            (u[:, 4] < 0.5).view(n, 1, 1))[:, None]                    # (n, 1, h, w)

    def energy(t: Tensor) -> Tensor:  # per image and channel
        return t.pow(2).sum((2, 3), keepdim=True)

    old = delta * w1
    new = bump * sign + old / (energy(old).sqrt() + 1e-10)
    left_over = (eps**2 - delta.pow(2).sum((1, 2, 3), keepdim=True)).clamp_min(0) / c
    new = new / energy(new * w1).sqrt().clamp_min(1e-12) * (left_over + energy(delta * (w1 | w2))).sqrt()
    delta = torch.where(w1, new, torch.where(w2, torch.zeros_like(delta), delta))
    total = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(n, 1, 1, 1)
    return x + delta / total * eps


def run_batch(forward: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, stages: list[Stage], *, eps: float,
              norm: str = "linf", seed: int = 0, capacity: int | None = None) -> Outcome:
    """Run a cascade over one batch (every sample assumed correctly classified
    by the caller or not: clean-wrong samples leave at step 0 of stage 0),
    at most ``capacity`` samples (default: all) in each model call: a slot a
    sample leaves takes the next one."""
    cap = capacity or len(y)
    with torch.no_grad():
        z = torch.cat([forward(x[i: i + cap]) for i in range(0, len(y), cap)])
    top = wrong_classes_by_rank(z, y)
    casc = Cascade(forward, stages, eps=eps, norm=norm, capacity=cap, seed=seed, num_classes=z.shape[1])
    idx = torch.arange(len(y), device=x.device)
    parts, fed = [], 0
    while fed < len(y) or len(casc.pool):
        if fed < len(y) and casc.free:
            k = min(casc.free, len(y) - fed)
            casc.feed(x[fed: fed + k], y[fed: fed + k], idx[fed: fed + k], top[fed: fed + k])
            fed += k
        out = casc.step()
        if out is not None:
            parts.append(out)
    return concat_outcomes(parts, order=True)


def drain(casc: Cascade) -> Iterator[Outcome]:
    while len(casc.pool):
        out = casc.step()
        if out is not None:
            yield out


def concat_outcomes(parts: list[Outcome], order: bool = False) -> Outcome:
    cat = {f: torch.cat([getattr(p, f) for p in parts]) for f in ("index", "stage", "step", "x_adv", "linf", "l2")}
    rec = torch.cat([p.recorded for p in parts]) if parts and parts[0].recorded is not None else None
    out = Outcome(**cat, recorded=rec)
    if order:
        perm = out.index.argsort()
        out = Outcome(**{f: getattr(out, f)[perm] for f in cat}, recorded=None if rec is None else rec[perm])
    return out


def model_forward(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """model(x) checked to be a (N, K) tensor of logits."""

    def fwd(x: Tensor) -> Tensor:
        return check_logits(model(x), x.shape[0])

    return fwd


__all__ = ["CLEAN_WRONG", "SURVIVED", "Cascade", "Outcome", "Stage", "apgd_checkpoints", "concat_outcomes",
           "drain", "keyed_uniform", "margin", "model_forward", "run_batch", "square_fraction", "stage_loss",
           "wrong_classes_by_rank"]
