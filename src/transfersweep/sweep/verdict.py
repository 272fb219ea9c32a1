"""The sweep's verdict: which paradigm wins, and which are tied with it.

Each paradigm is represented by its best trial (the search) or by its confirmation run
(transfersweep.sweep.confirm, fresh repeats: no winner's curse). The winner has the highest
mean objective (trainer.objective, default val_acc); every other paradigm is compared with it on the repeats both have
(same k-shot draw and seed) by a paired t-test, Holm-adjusted over the comparisons
(transfersweep.stats). "Tied" means no significant difference at 5 %, not proof of equality.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transfersweep import stats
from transfersweep.sweep.row import Row

HOW_TO_TEST = (
    "run the sweep with trainer.repeats>=5 (paired k-shot draws and seeds) or "
    "hydra.sweeper.confirm.top_k>=2 to test it"
)


@dataclass
class Comparison:
    row: Row
    paired: stats.Paired
    p_holm: float | None
    status: str  # winner | tied | worse | untested


@dataclass
class Verdict:
    winner: Row | None
    comparisons: list[Comparison] = field(default_factory=list)
    source: str = "search"  # search | confirmation
    text: str = "no completed trial: no verdict"

    def status_of(self, row: Row) -> Comparison | None:
        return next((c for c in self.comparisons if c.row is row), None)


def _pm(r: Row) -> str:
    name = "val" if r.objective == "val_acc" else r.objective
    if r.ci is None:
        return f"{name} {r.value:.3f}, n={r.n}"
    return f"{name} {r.value:.3f} ± {r.ci:.3f}, n={r.n}"


def decide(rows: list[Row], source: str = "search") -> Verdict:
    """The verdict over one row per paradigm (the objective's means and per-repeat values)."""
    rows = [r for r in rows if r.value is not None]
    if not rows:
        return Verdict(None)
    winner = max(rows, key=lambda r: r.value)  # type: ignore[arg-type,return-value]
    others = [r for r in rows if r is not winner]
    tests = [stats.paired(winner.values(), r.values()) for r in others]
    tested = [i for i, t in enumerate(tests) if t.p is not None]
    adjusted = dict(zip(tested, stats.holm([tests[i].p for i in tested]), strict=True))
    comparisons = [Comparison(winner, stats.Paired(winner.n, 0.0, None), None, "winner")]
    for i, (r, t) in enumerate(zip(others, tests, strict=True)):
        p = adjusted.get(i)
        status = (
            "untested" if p is None else ("worse" if p < stats.ALPHA and t.diff > 0 else "tied")
        )
        comparisons.append(Comparison(r, t, p, status))
    v = Verdict(winner, comparisons, source)
    v.text = _text(v)
    return v


def _text(v: Verdict) -> str:
    assert v.winner is not None
    where = " in the confirmation runs" if v.source == "confirmation" else ""
    by = {s: [c for c in v.comparisons if c.status == s] for s in ("tied", "worse", "untested")}
    if len(v.comparisons) == 1:  # the winner alone (one paradigm searched): nothing to test
        return (
            f"{v.winner.paradigm.name} is the only paradigm scored{where} ({_pm(v.winner)}); "
            "its best configuration is the answer"
        )
    if not by["tied"] and not by["worse"]:
        return (
            f"{v.winner.paradigm.name} ranks first{where} ({_pm(v.winner)}); the ranking is "
            f"untested (fewer than {stats.MIN_PAIRED} paired repeats): {HOW_TO_TEST}"
        )
    parts = [f"{v.winner.paradigm.name} wins{where} ({_pm(v.winner)})"]
    if by["tied"]:
        tied = ", ".join(
            f"{c.row.paradigm.name} (p={c.p_holm:.2g})"
            for c in sorted(by["tied"], key=lambda c: -(c.row.value or 0.0))
        )
        parts.append(f"tied with it: {tied}")
    else:
        parts.append("tied with it: none")
    if by["worse"]:
        worst_p = max(c.p_holm for c in by["worse"])
        parts.append(f"worse: {len(by['worse'])} other(s) (Holm-adjusted p<={worst_p:.2g})")
    if by["untested"]:
        parts.append(
            f"untested: {len(by['untested'])} (fewer than {stats.MIN_PAIRED} paired repeats)"
        )
    if by["tied"] and (cheap := cheapest_tied(v)) is not None:
        w = v.winner
        if cheap is w:
            parts.append(
                f"the winner is also the cheapest of these ({w.target_seconds:.3g} s per repeat)"
            )
        else:
            parts.append(
                f"cheapest of these: {cheap.paradigm.name} ({cheap.target_seconds:.3g} s per repeat "
                f"against the winner's {w.target_seconds:.3g} s)"
            )
    return "; ".join(parts)


def cheapest_tied(v: Verdict) -> Row | None:
    """The cheapest (target-stage seconds per repeat) of the winner and the paradigms tied
    with it; None when a cost is unknown."""
    pool = [c.row for c in v.comparisons if c.status in ("winner", "tied")]
    if any(r.target_seconds is None for r in pool):
        return None
    return min(pool, key=lambda r: r.target_seconds)
