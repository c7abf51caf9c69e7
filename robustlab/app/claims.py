"""A study's claims, computed from its result tables instead of written by hand.

A chapter config declares what the thesis says as comparisons over result
cells; the study records, for each claim, whether it held on this run and the
numbers it compared:

    claims:
      - id: T3.1
        says: M-DI²-FGSM transfers better than I-FGSM to every black-box network
        holds_if: 'single[mdi2fgsm, a_w16]."→ {}" > single[ifgsm, a_w16]."→ {}"'
        for_each: [b_w16, c_w32, d_deep, e_w8]

Grammar of ``holds_if`` (no Python is evaluated)::

    claim  := sum OP sum                      OP: >  >=  <  <=  ==  !=
    sum    := atom (("+" | "-") atom)*
    atom   := NUMBER | cell | FUNC "(" cell ")" | "(" sum ")"
    cell   := EVALUATION "[" key ("," key)* "]" "." column
    FUNC   := mean | min | max                (over every cell a glob matches)

``EVALUATION`` names one of the study's evaluations; the keys select a row of
its table by the row's leading text columns in order (``model``, ``route``;
``attack``, ``source``); ``column`` names a column. Keys and columns are
words or double-quoted strings and may hold ``*``/``?`` globs, which only a
function may aggregate (``[bc]`` classes too). With ``for_each``, every ``{}`` is replaced by each
item in turn and the claim holds only if every instance does.

Verdicts: ``holds``, ``does not hold``, or ``not evaluated`` (with the
reason) when a cell the claim needs is not in the results (e.g. an
evaluation a ``--smoke`` form dropped).

Each record keeps the comparison itself beside every cell it read:
``left``, ``op``, ``right`` (the two numbers compared, e.g. the two minima
of a ``min(...) > min(...)`` claim), ``difference`` = left − right and the
terms they are (``left_term``, ``right_term``); with ``for_each``, per item.

Sampling noise. A verdict is the comparison of two measured numbers and says
nothing of their error, so each comparison also carries, where it can be
computed, a 95% ``interval`` for the difference and ``within_noise``, true
when that interval contains 0 (a verdict noise could flip). The rule:

- a side is a *proportion* when it is one cell, or ``mean``/``min``/``max``
  of cells, of an evaluation that records its number of images ``n`` (an
  integer) and whose kind counts images (not the DAG kinds, ``bn_statistics``
  or ``gaps``), every cell read in [0, 1]; its n is that evaluation's n (an
  aggregate counts as one proportion on the n images of its cells: for a
  mean this over-states its spread, for min/max it ignores which cell was
  picked). A number written in the claim is exact.
- with both sides proportions, or one a proportion and the other a number,
  the interval is Newcombe's hybrid score interval for p1 − p2 (method 10
  of Newcombe 1998), built from the two Wilson intervals; against an exact
  number it is the proportion's Wilson interval shifted. It treats the two
  sides as independent samples. Two models scored on the same images (one
  evaluation: ``paired``) are paired data, for which it is conservative
  (too wide) when their outcomes are positively correlated, as they usually
  are.
- any other side (a sum, an unknown n) gives no interval and no flag.

With ``for_each`` the claim is ``within_noise`` when its verdict rests on a
comparison within noise: for a claim that holds, any item; for one that does
not hold, every item that fails.
"""
from __future__ import annotations

import fnmatch
import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from robustlab.report.format import NOT_RATE_COLUMNS, counted_nothing, row_counts

OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq,
       "!=": operator.ne}
FUNCS = {"mean": lambda v: sum(v) / len(v), "min": min, "max": max}
CLAIM_KEYS = ("id", "says", "holds_if", "for_each")
VERDICTS = ("holds", "does not hold", "not evaluated")
#: Evaluation kinds whose cells are not proportions of images (mIoU, mAP, BN statistics, differences).
NOT_PROPORTIONS = ("dag", "dag transfer", "dag targeted", "dag proposals", "bn_statistics", "gaps")
NOISE_METHOD = ("Newcombe hybrid score interval (Wilson), independent samples; conservative for paired "
                "samples (the same images) with positively correlated outcomes")

_TOKEN = re.compile(r"""\s*(?:
    (?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
  | (?P<string>"[^"]*")
  | (?P<op>>=|<=|==|!=|>|<)
  | (?P<punct>[\[\],.()+-])
  | (?P<word>[A-Za-z_*?][\w*?/\-]*)
)""", re.VERBOSE)


class ClaimError(ValueError):
    """A claim that cannot be read (bad syntax, an unknown evaluation)."""


class MissingCell(LookupError):
    """A cell the claim needs is not in the results."""


# -- parsing -------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    evaluation: str
    keys: tuple[str, ...]
    column: str

    def __str__(self) -> str:
        keys = ", ".join(_quote(k) for k in self.keys)
        return f"{self.evaluation}[{keys}].{_quote(self.column)}"

    @property
    def glob(self) -> bool:
        return any(ch in s for s in (*self.keys, self.column) for ch in "*?[")


def _quote(s: str) -> str:
    return s if re.fullmatch(r"[A-Za-z_][\w\-/]*", s) else f'"{s}"'


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ClaimError(f"cannot read {text[pos:]!r}")
        kind = m.lastgroup
        value = m.group(kind)
        out.append((kind, value[1:-1] if kind == "string" else value))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent over the tokens; produces a small tree of tuples."""

    def __init__(self, text: str) -> None:
        self.toks, self.i, self.text = _tokens(text), 0, text

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str | None = None, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (kind and tok[0] != kind) or (value and tok[1] != value):
            want = value or kind or "more"
            raise ClaimError(f"expected {want!r} at {' '.join(t[1] for t in self.toks[self.i:]) or 'the end'!r}")
        self.i += 1
        return tok

    def claim(self) -> tuple:
        left = self.sum()
        op = self.take("op")[1]
        right = self.sum()
        if self.peek() is not None:
            raise ClaimError(f"unexpected {self.peek()[1]!r} after the comparison")
        return ("cmp", op, left, right)

    def sum(self) -> tuple:
        node = self.atom()
        while self.peek() in (("punct", "+"), ("punct", "-")):
            op = self.take()[1]
            node = ("bin", op, node, self.atom())
        return node

    def atom(self) -> tuple:
        tok = self.peek()
        if tok is None:
            raise ClaimError("the claim ends too early")
        if tok[0] == "number":
            self.i += 1
            return ("num", float(tok[1]))
        if tok == ("punct", "("):
            self.i += 1
            node = self.sum()
            self.take("punct", ")")
            return node
        if tok == ("punct", "-"):
            self.i += 1
            return ("bin", "-", ("num", 0.0), self.atom())
        if tok[0] == "word" and tok[1] in FUNCS and self.toks[self.i + 1: self.i + 2] == [("punct", "(")]:
            self.i += 2
            cell = self.cell()
            self.take("punct", ")")
            return ("func", tok[1], cell)
        cell = self.cell()
        if cell.glob:
            raise ClaimError(f"{cell} matches several cells: aggregate it with mean(), min() or max()")
        return ("cell", cell)

    def name(self) -> str:
        tok = self.peek()
        if tok is None or tok[0] not in ("word", "string", "number"):
            raise ClaimError(f"expected a name at {tok[1] if tok else 'the end'!r}")
        self.i += 1
        return tok[1]

    def cell(self) -> Cell:
        evaluation = self.take("word")[1]
        self.take("punct", "[")
        keys = [self.name()]
        while self.peek() == ("punct", ","):
            self.i += 1
            keys.append(self.name())
        self.take("punct", "]")
        self.take("punct", ".")
        return Cell(evaluation, tuple(keys), self.name())


def _cells(node: tuple) -> list[Cell]:
    if node[0] == "cell":
        return [node[1]]
    if node[0] == "func":
        return [node[2]]
    if node[0] in ("bin", "cmp"):
        return _cells(node[2]) + _cells(node[3])
    return []


@dataclass(frozen=True)
class Claim:
    id: str
    says: str
    holds_if: str
    for_each: tuple[Any, ...] | None = None

    def instances(self) -> list[str]:
        if self.for_each is None:
            return [self.holds_if]
        return [self.holds_if.replace("{}", str(item)) for item in self.for_each]


def parse_claims(raw: Any, evaluations: Mapping[str, Any], where: str = "claims") -> list[Claim]:
    """The study's ``claims`` list, checked before anything runs: keys, syntax
    and the evaluations each claim reads."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ClaimError(f"study key '{where}' must be a list of {{id, says, holds_if}} mappings; got {raw!r}")
    claims, seen = [], set()
    for n, item in enumerate(raw):
        label = f"{where}[{n}]"
        if not isinstance(item, dict):
            raise ClaimError(f"{label} must be a mapping with id, says and holds_if; got {item!r}")
        unknown = sorted(set(item) - set(CLAIM_KEYS))
        missing = [k for k in ("id", "says", "holds_if") if not isinstance(item.get(k), str) or not item[k].strip()]
        if unknown or missing:
            raise ClaimError(f"{label}: {'unknown key(s) ' + str(unknown) if unknown else ''}"
                             f"{'; ' if unknown and missing else ''}"
                             f"{'missing or empty ' + str(missing) if missing else ''}; a claim has "
                             f"{', '.join(CLAIM_KEYS)} (for_each optional)")
        cid = item["id"]
        if cid in seen:
            raise ClaimError(f"{label}: claim id {cid!r} is used twice")
        seen.add(cid)
        for_each = item.get("for_each")
        if for_each is not None and (not isinstance(for_each, list) or not for_each):
            raise ClaimError(f"{label} ({cid}): for_each must be a non-empty list; got {for_each!r}")
        if for_each is not None and "{}" not in item["holds_if"]:
            raise ClaimError(f"{label} ({cid}): for_each is given but holds_if has no {{}} to substitute")
        claim = Claim(cid, item["says"].strip(), item["holds_if"].strip(),
                      tuple(for_each) if for_each is not None else None)
        for text in claim.instances():
            try:
                tree = _Parser(text).claim()
            except ClaimError as err:
                raise ClaimError(f"{label} ({cid}): holds_if {text!r}: {err}") from None
            bad = sorted({c.evaluation for c in _cells(tree)} - set(evaluations))
            if bad:
                raise ClaimError(f"{label} ({cid}): unknown evaluation(s) {bad}; the study has "
                                 f"{', '.join(evaluations) or 'none'}")
        claims.append(claim)
    return claims


# -- evaluation ------------------------------------------------------------------
def _key_columns(row: Mapping[str, Any]) -> list[str]:
    cols = []
    for k, v in row.items():
        if not isinstance(v, str):
            break
        cols.append(k)
    return cols


def lookup(cell: Cell, evaluations: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(label, value) of every table cell ``cell`` matches."""
    ev = evaluations.get(cell.evaluation)
    if ev is None:
        raise MissingCell(f"evaluation {cell.evaluation!r} is not in the results")
    found, empty = [], []
    for row, n in zip(ev.get("table", []), row_counts(ev)):
        keys = _key_columns(row)
        if len(cell.keys) > len(keys):
            continue
        values = [str(row[k]) for k in keys[: len(cell.keys)]]
        if not all(fnmatch.fnmatchcase(v, pattern) for v, pattern in zip(values, cell.keys)):
            continue
        for col, value in row.items():
            if col in keys or not fnmatch.fnmatchcase(col, cell.column):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            label = f"{cell.evaluation}[{', '.join(str(row[k]) for k in keys)}].{col}"
            found.append((label, float(value)))
            if counted_nothing(n):
                empty.append(label)
    if not found:
        raise MissingCell(f"no cell {cell} in the results")
    if empty:  # e.g. transfer: no image every model classifies correctly, so its rates are 0 / 0
        value = f" ({ev['value']})" if ev.get("value") else ""
        raise MissingCell(f"{', '.join(empty)}: evaluation {cell.evaluation!r} counted no image there "
                          f"(n = 0{value}): its cells measure nothing")
    if not cell.glob and len(found) > 1:
        raise MissingCell(f"{cell} matches {len(found)} cells ({', '.join(f[0] for f in found)}); "
                          "name more row keys")
    return found


def _value(node: tuple, evaluations: Mapping[str, Any], used: dict[str, float]) -> float:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "cell":
        (label, value), = lookup(node[1], evaluations)
        used[label] = value
        return value
    if kind == "func":
        cells = lookup(node[2], evaluations)
        used.update(cells)
        result = FUNCS[node[1]]([v for _, v in cells])
        used[f"{node[1]}({node[2]})"] = result
        return result
    left, right = _value(node[2], evaluations, used), _value(node[3], evaluations, used)
    return left + right if node[1] == "+" else left - right


def _text(node: tuple) -> str:
    """One side of a comparison as the claim writes it (``min(pgd[at]."PGD-*")``)."""
    kind = node[0]
    if kind == "num":
        return f"{node[1]:g}"
    if kind == "cell":
        return str(node[1])
    if kind == "func":
        return f"{node[1]}({node[2]})"
    right = _text(node[3])
    right = f"({right})" if node[3][0] == "bin" else right  # the parser groups to the left: these were bracketed
    if node[2] == ("num", 0.0) and node[1] == "-":  # unary minus
        return f"-{right}"
    return f"{_text(node[2])} {node[1]} {right}"


def _sample(node: tuple, evaluations: Mapping[str, Any]) -> tuple[str, int | None] | None:
    """What one side of a comparison is, for its sampling error: ``("exact",
    None)`` for a number, ``(EVALUATION, n)`` for a proportion measured on n
    images (a cell or an aggregate of cells, the module's rule), else None."""
    if node[0] == "num":
        return ("exact", None)
    if node[0] not in ("cell", "func"):
        return None
    cell = node[1] if node[0] == "cell" else node[2]
    ev = evaluations.get(cell.evaluation) or {}
    n = ev.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or ev.get("kind") in NOT_PROPORTIONS:
        return None
    if not all(0.0 <= v <= 1.0 for _, v in lookup(cell, evaluations)):
        return None
    return (cell.evaluation, n)


def noise_interval(left: float, right: float, n_left: int | None, n_right: int | None,
                   z: float = 1.96) -> tuple[float, float]:
    """95% interval of ``left − right``, two proportions measured on n_left
    and n_right samples (None: an exact number): Newcombe's hybrid score
    interval (1998, method 10) from the two Wilson intervals."""
    from robustlab.report.format import wilson

    l1, u1 = wilson(left, n_left, z) if n_left else (left, left)
    l2, u2 = wilson(right, n_right, z) if n_right else (right, right)
    d = left - right
    return d - math.hypot(left - l1, u2 - right), d + math.hypot(u1 - left, right - l2)


def _noise(tree: tuple, left: float, right: float, evaluations: Mapping[str, Any]) -> dict[str, Any]:
    """``interval`` and ``within_noise`` of one comparison, where the rule gives them."""
    sides = _sample(tree[2], evaluations), _sample(tree[3], evaluations)
    if None in sides or all(s[1] is None for s in sides):
        return {}
    (ev_l, n_l), (ev_r, n_r) = sides
    low, high = noise_interval(left, right, n_l, n_r)
    return {"interval": {"low": low, "high": high, "level": 0.95, "method": NOISE_METHOD, "n": [n_l, n_r],
                         "paired": ev_l == ev_r},
            "within_noise": bool(low <= 0.0 <= high)}


def _claim_noise(verdict: str, parts: list[dict[str, Any]]) -> bool | None:
    """A for_each claim's flag: does its verdict rest on a comparison within noise?"""
    rests_on = parts if verdict == "holds" else [p for p in parts if not p["holds"]]
    flags = [p.get("within_noise") for p in rests_on]
    if verdict == "holds":
        return True if True in flags else (False if flags and all(f is False for f in flags) else None)
    return False if False in flags else (True if flags and all(f is True for f in flags) else None)


#: Evaluation kinds whose numbers are not rates (with report.format.NOT_RATE_COLUMNS): their
#: differences are not percentage points.
NOT_RATES = ("bn_statistics",)


def _unit(tree: tuple, left: float, right: float, evaluations: Mapping[str, Any]) -> str:
    """``proportion`` when both sides are rates (their difference reads in
    percentage points), else ``number``."""
    for cell in _cells(tree):
        kind = (evaluations.get(cell.evaluation) or {}).get("kind")
        if kind in NOT_RATES or any(w in str(cell.column) for w in NOT_RATE_COLUMNS):
            return "number"
    return "proportion" if abs(left) <= 1 and abs(right) <= 1 else "number"


def _compare(text: str, evaluations: Mapping[str, Any], values: dict[str, float]) -> dict[str, Any]:
    """One instance of a claim: its two sides (``left``, ``op``, ``right``,
    and the terms they are, ``left_term``, ``right_term``), whether the
    comparison is true, ``difference`` = left − right, and its sampling
    error where the module's rule gives one (``interval``, ``within_noise``)."""
    tree = _Parser(text).claim()
    left = _value(tree[2], evaluations, values)
    right = _value(tree[3], evaluations, values)
    return {"holds_if": text, "left_term": _text(tree[2]), "left": left, "op": tree[1], "right_term": _text(tree[3]),
            "right": right, "difference": left - right, "unit": _unit(tree, left, right, evaluations),
            **_noise(tree, left, right, evaluations),
            "holds": bool(OPS[tree[1]](left, right))}


def evaluate_claims(claims: list[Claim], evaluations: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each claim's record for ``results.json``: id, says, holds_if, verdict,
    values (every cell and aggregate compared), the comparison itself
    (``left``, ``op``, ``right``, ``difference`` = left − right, its ``unit``:
    ``proportion`` or ``number``, and the terms compared), its ``interval``
    and ``within_noise`` where the module's rule gives them and, with
    ``for_each``, the same per item with its own verdict (the claim's ``within_noise`` over them)."""
    out = []
    for claim in claims:
        values: dict[str, float] = {}
        parts = []
        reason = None
        for text in claim.instances():
            try:
                parts.append(_compare(text, evaluations, values))
            except MissingCell as err:
                reason = str(err)
                break
        record: dict[str, Any] = {"id": claim.id, "says": claim.says, "holds_if": claim.holds_if}
        if reason is not None:
            record.update(verdict="not evaluated", reason=reason, values=values)
        else:
            record.update(verdict="holds" if all(p["holds"] for p in parts) else "does not hold", values=values)
            if claim.for_each is not None:
                record["for_each"] = [{"item": item, **p} for item, p in zip(claim.for_each, parts)]
                noise = _claim_noise(record["verdict"], parts)
                if noise is not None:
                    record["within_noise"] = noise
            else:
                record.update({k: v for k, v in parts[0].items() if k not in ("holds_if", "holds")})
        out.append(record)
    return out
