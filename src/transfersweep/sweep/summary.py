"""Sweep reporting: the regime x strategy paradigm table, CSVs, Pareto front and verdict.

Reads the Optuna study (params + the user attributes each trial attached: its Record of
per-repeat scores, paradigm, MLflow run id) and writes everything into the sweep's parent
MLflow run under `summary/`. Every number shown is the objective (trainer.objective) unless
named otherwise. The PNGs are drawn by transfersweep.sweep.plots.
"""

from __future__ import annotations

import csv
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transfersweep import scores
from transfersweep.paradigm import Paradigm
from transfersweep.scores import Record
from transfersweep.sweep import default, plots
from transfersweep.sweep import prerank as prerank_mod
from transfersweep.sweep import verdict as verdict_mod
from transfersweep.sweep.row import Row, pm, result_columns

log = logging.getLogger(__name__)


def rows(study: Any, objective: str) -> list[Row]:
    return [
        Row(
            number=t.number,
            state=t.state.name,
            paradigm=Paradigm.from_trial(t.user_attrs, t.params),
            run_id=t.user_attrs.get("run_id", ""),
            params=dict(t.params),
            error=t.user_attrs.get("error", ""),
            objective=objective,
            record=Record.of_trial(t.user_attrs),
            target_seconds=t.user_attrs.get("target_seconds"),
        )
        for t in study.trials
    ]


def best_per_cell(trials: list[Row]) -> dict[tuple[str, str], Row]:
    best: dict[tuple[str, str], Row] = {}
    for r in trials:
        if r.state != "COMPLETE" or r.value is None:
            continue
        if r.cell not in best or r.value > best[r.cell].value:  # type: ignore[operator]
            best[r.cell] = r
    return best


def axes(best: dict[tuple[str, str], Row]) -> tuple[list[str], list[str]]:
    """Rows: the regimes present, sorted. Columns: the strategies present, in the registry's
    catalogue order (least to most trained), then any others (a plug-in this process has not
    loaded) sorted."""
    from transfersweep import strategies

    regimes = sorted({g for g, _ in best})
    present = {f for _, f in best}
    catalogue = [f for f in strategies.names() if f in present]
    return regimes, catalogue + sorted(present - set(catalogue))


def _score(r: Row, name: str) -> str:
    e = r.est(name)
    return "-" if e is None else pm(e.mean, e.ci95)


def _test(r: Row) -> str:
    """The objective's metric on test, and out of distribution when the run scored one."""
    ood = f"; ood {_score(r, r.on('ood'))}" if r.est(r.on("ood")) is not None else ""
    return _score(r, r.on("test")) + ood


def _cell(r: Row, status: str | None) -> str:
    variant = r.paradigm.variant if r.paradigm.variant != r.paradigm.strategy else ""
    mark = f" **{status}**" if status in ("winner", "tied") else ""
    return (
        f"{pm(r.value, r.ci)} ({_test(r)}) n={r.n} #{r.number}"
        + (f" {variant}" if variant else "")
        + mark
    )


def header(objective: str) -> str:
    on_test = scores.on(objective, "test")
    return (
        f"Target {objective} of each paradigm's best trial in the search ({on_test} of the same "
        "trial in brackets): mean ± 95 % CI half-width over n repeats (k-shot draws and seeds)."
    )


def table_markdown(best: dict[tuple[str, str], Row], objective: str, verdict: Any = None) -> str:
    """The regime x strategy table; `verdict` (of these rows) marks the winner and the tied."""
    regimes, freezes = axes(best)
    if verdict is not None and not any(c.status in ("tied", "worse") for c in verdict.comparisons):
        verdict = None  # an untested ranking marks no winner
    marks = (
        " **winner** and the paradigms **tied** with it by the verdict below." if verdict else ""
    )
    lines = [
        header(objective) + marks,
        "",
        f"| {'backbone/' if _per_backbone(best) else ''}regime \\ freeze | "
        + " | ".join(freezes)
        + " |",
        "|---|" + "---|" * len(freezes),
    ]
    for g in regimes:
        cells = []
        for f in freezes:
            r = best.get((g, f))
            c = verdict.status_of(r) if verdict is not None and r is not None else None
            cells.append("-" if r is None else _cell(r, c.status if c else None))
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _per_backbone(best: dict[tuple[str, str], Row]) -> bool:
    return any(r.paradigm.backbone for r in best.values())


def confirmation_markdown(verdict: Any, objective: str) -> str:
    on_test = scores.on(objective, "test")
    lines = [
        "Confirmation: the best configuration of the top paradigms re-run on fresh repeats "
        "(draws and seeds the search never used); these numbers decide the verdict.",
        "",
        f"| paradigm | {objective} | {on_test} | n | p (Holm) | verdict | run |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in verdict.comparisons:
        r = c.row
        p = "-" if c.p_holm is None else f"{c.p_holm:.3g}"
        lines.append(
            f"| {r.paradigm.name} | {pm(r.value, r.ci)} | {_test(r)} | "
            f"{r.n} | {p} | {c.status} | {r.run_id} |"
        )
    return "\n".join(lines) + "\n"


def _csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _verdict_columns(verdict: Any, r: Row) -> list[Any]:
    c = verdict.status_of(r) if verdict is not None else None
    if c is None:
        return ["", "", ""]
    return [
        c.paired.p if c.paired.p is not None else "",
        c.p_holm if c.p_holm is not None else "",
        c.status,
    ]


VERDICT_COLUMNS = ["p_value", "p_holm", "verdict"]


@dataclass
class Summary:
    trials: list[Row]
    best: dict[tuple[str, str], Row]
    verdict: Any  # verdict.Verdict: of the confirmation runs when there are any
    markdown: str  # the paradigm table (+ confirmation, + Pareto front) + the verdict
    front: list[Row] = field(default_factory=list)  # multi-objective studies: the Pareto front

    @property
    def complete(self) -> list[Row]:
        return [r for r in self.trials if r.state == "COMPLETE" and r.value is not None]


def build(study: Any, objective: str, confirmed: list[Row] | None = None) -> Summary:
    trials = rows(study, objective)
    best = best_per_cell(trials)
    search = verdict_mod.decide(list(best.values()))
    final = verdict_mod.decide(confirmed, "confirmation") if confirmed else search
    if final.winner is not None and (where := default.place(study, trials, final, search)):
        final.text = f"{final.text.rstrip('.')}; {where}"
    note = study.user_attrs.get("space_note")
    if note:  # e.g. no source set: the regimes that need one were not searched
        final.text = f"{final.text.rstrip('.')}. {note}"
    if spent := study.user_attrs.get("budget_note"):  # hydra.sweeper.time_budget
        final.text = f"{final.text.rstrip('.')}. {spent[0].upper()}{spent[1:]}"
    md = table_markdown(best, objective, None if confirmed else search)
    if confirmed:
        md += "\n" + confirmation_markdown(final, objective)
    front = pareto_front(study, trials)
    if front:
        md += "\n" + pareto_markdown(front, objective)
    if ranked := prerank_of(study):
        md += "\n" + prerank_mod.markdown(ranked, objective, measured_per_backbone(trials))
    md += f"\n**Verdict**: {final.text}\n"
    return Summary(trials, best, final, md, front)


def prerank_of(study: Any) -> prerank_mod.Ranking | None:
    stored = study.user_attrs.get(prerank_mod.ATTR)
    return prerank_mod.Ranking.from_dict(stored) if stored else None


def measured_per_backbone(trials: list[Row]) -> dict[str, float]:
    """The best objective the search measured for each backbone (complete trials)."""
    out: dict[str, float] = {}
    for r in trials:
        b = r.paradigm.backbone
        if r.state == "COMPLETE" and r.value is not None and b:
            out[b] = max(out.get(b, -math.inf), r.value)
    return out


def pareto_front(study: Any, trials: list[Row]) -> list[Row]:
    """A multi-objective study's Pareto-optimal trials, cheapest first ([] otherwise)."""
    if len(study.directions) < 2:
        return []
    numbers = {t.number for t in study.best_trials}
    front = [r for r in trials if r.number in numbers]
    return sorted(front, key=lambda r: (r.target_seconds or 0.0, -(r.value or 0.0)))


def pareto_markdown(front: list[Row], objective: str) -> str:
    lines = [
        f"Pareto front: no other trial is both better and cheaper (target {objective} "
        "against the target stages' training seconds per repeat).",
        "",
        f"| trial | paradigm | {objective} | {front[0].on('test')} | n | seconds per repeat |",
        "|---|---|---|---|---|---|",
    ]
    for r in front:
        secs = "-" if r.target_seconds is None else f"{r.target_seconds:.1f}"
        lines.append(
            f"| #{r.number} | {r.paradigm.name} | {pm(r.value, r.ci)} | "
            f"{_score(r, r.on('test'))} | {r.n} | {secs} |"
        )
    return "\n".join(lines) + "\n"


def write(study: Any, out_dir: Path, objective: str, confirmed: list[Row] | None = None) -> Summary:
    """Write the summary files into out_dir."""
    s = build(study, objective, confirmed)
    search = s.verdict if not confirmed else None
    columns = result_columns(objective)
    (out_dir / "paradigm_table.md").write_text(s.markdown, encoding="utf-8")
    by_backbone = _per_backbone(s.best)  # a backbone column when backbones are searched
    _csv(
        out_dir / "paradigm_table.csv",
        ["backbone"] * by_backbone + ["regime", "freeze", "best_trial", *columns, *VERDICT_COLUMNS],
        [
            [r.paradigm.backbone] * by_backbone
            + [r.paradigm.regime, f, r.number, *r.results(), *_verdict_columns(search, r)]
            for (_, f), r in sorted(s.best.items())
        ],
    )
    if confirmed:
        _csv(
            out_dir / "confirmation.csv",
            ["confirms_trial", *columns, *VERDICT_COLUMNS],
            [
                [c.row.number, *c.row.results(), *_verdict_columns(s.verdict, c.row)]
                for c in s.verdict.comparisons
            ],
        )
    _csv(
        out_dir / "trials.csv",
        ["trial", "state", *columns, "params", "error"],
        [[r.number, r.state, *r.results(), r.params, r.error] for r in s.trials],
    )
    if s.front:
        _csv(
            out_dir / "pareto_front.csv",
            ["trial", *columns],
            [[r.number, *r.results()] for r in s.front],
        )
        plots.pareto(s.trials, s.front, objective, out_dir / "pareto_front.png")
    (out_dir / "verdict.txt").write_text(s.verdict.text + "\n", encoding="utf-8")
    plots.paradigms(study, s.best, axes(s.best), objective, out_dir)
    return s


def _description(s: Summary) -> str:
    """The run page's description: tables + verdict, the tables cut (never the verdict) to fit
    one MLflow tag."""
    from transfersweep.tracking import MAX_TAG

    if len(s.markdown) <= MAX_TAG:
        return s.markdown
    tail = f"\n... (full tables: summary/paradigm_table.md)\n\n**Verdict**: {s.verdict.text}\n"
    return s.markdown[: MAX_TAG - len(tail)] + tail


def log_to_parent(
    study: Any, parent: Any, objective: str, confirmed: list[Row] | None = None
) -> Summary:
    """Write the summary into the parent run: artifacts under summary/, headline metrics, the
    verdict as a tag and, with the tables, as the run's description (the MLflow run page)."""
    with tempfile.TemporaryDirectory() as tmp:
        s = write(study, Path(tmp), objective, confirmed)
        parent.log_dir(Path(tmp), "summary")
    parent.log_metrics(
        {
            "n_trials": len(s.trials),
            "n_complete": len(s.complete),
            "n_failed": sum(r.state == "FAIL" for r in s.trials),
            "n_pruned": sum(r.state == "PRUNED" for r in s.trials),
        }
    )
    if s.complete:
        best_value = max(r.value for r in s.complete if r.value is not None)
        parent.log_metrics({f"search_best_{objective}": best_value})
    if ranked := prerank_of(study):  # how well each score foretold the measured ranking
        taus = prerank_mod.kendall(ranked, measured_per_backbone(s.trials))
        parent.log_metrics({f"prerank_tau_{k}": tau for k, (tau, _) in taus.items()})
    w = s.verdict.winner  # of the confirmation runs when there are any
    if w is not None:
        test = w.est(w.on("test"))
        parent.log_metrics(
            {
                f"best_{objective}": w.value if w.value is not None else math.nan,
                f"best_{objective}_ci95": w.ci if w.ci is not None else math.nan,
                f"best_{w.on('test')}": test.mean if test is not None else math.nan,
                "best_trial": w.number,
            }
        )
        parent.set_tags(
            {"best_paradigm": w.paradigm.name, "best_run_id": w.run_id, "best_trial": str(w.number)}
        )
    parent.set_tags(
        {
            "verdict": s.verdict.text,
            "verdict_source": s.verdict.source,
            "mlflow.note.content": _description(s),
        }
    )
    return s
