"""Sweep reporting: the regime x strategy paradigm table, heatmap, history and importances.

Reads the Optuna study (params + the user attributes each trial attached:
val/test mean and std, paradigm, MLflow run id) and writes everything into the
sweep's parent MLflow run under `summary/`. PNGs only: plotly HTML would fetch
plotly from the internet when opened.
"""

from __future__ import annotations

import csv
import logging
import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transfersweep.paradigm import Paradigm

log = logging.getLogger(__name__)


@dataclass
class Row:
    number: int
    state: str
    paradigm: Paradigm
    val_acc: float | None
    val_std: float | None
    test_acc: float | None
    test_std: float | None
    run_id: str
    params: dict[str, Any]
    error: str

    @property
    def cell(self) -> tuple[str, str]:
        return (self.paradigm.regime, self.paradigm.strategy)

    def results(self) -> list[Any]:
        """The values of RESULT_COLUMNS, which both CSVs carry."""
        return [
            self.paradigm.name, self.val_acc, self.val_std, self.test_acc, self.test_std,
            self.run_id,
        ]  # fmt: skip


RESULT_COLUMNS = ["paradigm", "val_acc", "val_std", "test_acc", "test_std", "run_id"]


def rows(study: Any) -> list[Row]:
    out = []
    for t in study.trials:
        a = t.user_attrs
        out.append(
            Row(
                number=t.number,
                state=t.state.name,
                paradigm=Paradigm.from_trial(a, t.params),
                val_acc=a.get("val_acc", t.value),
                val_std=a.get("val_std"),
                test_acc=a.get("test_acc"),
                test_std=a.get("test_std"),
                run_id=a.get("run_id", ""),
                params=dict(t.params),
                error=a.get("error", ""),
            )
        )
    return out


def best_per_cell(trials: list[Row]) -> dict[tuple[str, str], Row]:
    best: dict[tuple[str, str], Row] = {}
    for r in trials:
        if r.state != "COMPLETE" or r.val_acc is None:
            continue
        if r.cell not in best or r.val_acc > best[r.cell].val_acc:
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


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


def table_markdown(best: dict[tuple[str, str], Row]) -> str:
    regimes, freezes = axes(best)
    lines = [
        "Best target validation accuracy per paradigm (test accuracy of the same trial in brackets; "
        "mean ± std over trainer.repeats seeds).",
        "",
        "| regime \\ freeze | " + " | ".join(freezes) + " |",
        "|---|" + "---|" * len(freezes),
    ]
    for g in regimes:
        cells = []
        for f in freezes:
            r = best.get((g, f))
            if r is None:
                cells.append("-")
                continue
            variant = r.paradigm.variant if r.paradigm.variant != f else ""
            cells.append(
                f"{_pm(r.val_acc, r.val_std)} ({_pm(r.test_acc, r.test_std)}) #{r.number}"
                + (f" {variant}" if variant else "")
            )
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def write(study: Any, out_dir: Path) -> dict[str, Any]:
    """Write summary files into out_dir; returns the headline numbers for the parent run."""
    trials = rows(study)
    best = best_per_cell(trials)
    (out_dir / "paradigm_table.md").write_text(table_markdown(best), encoding="utf-8")
    _csv(
        out_dir / "paradigm_table.csv",
        ["regime", "freeze", "best_trial", *RESULT_COLUMNS],
        [[g, f, r.number, *r.results()] for (g, f), r in sorted(best.items())],
    )
    _csv(
        out_dir / "trials.csv",
        ["trial", "state", *RESULT_COLUMNS, "params", "error"],
        [[r.number, r.state, *r.results(), r.params, r.error] for r in trials],
    )
    _plots(study, best, out_dir)
    complete = [r for r in trials if r.state == "COMPLETE" and r.val_acc is not None]
    head: dict[str, Any] = {
        "n_trials": len(trials),
        "n_complete": len(complete),
        "n_failed": sum(r.state == "FAIL" for r in trials),
        "n_pruned": sum(r.state == "PRUNED" for r in trials),
    }
    if complete:
        top = max(complete, key=lambda r: r.val_acc)
        head |= {"best": top}
    return head


def _plots(study: Any, best: dict[tuple[str, str], Row], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if best:
        regimes, freezes = axes(best)
        grid = [
            [best[(g, f)].val_acc if (g, f) in best else math.nan for f in freezes] for g in regimes
        ]
        fig, ax = plt.subplots(figsize=(1.5 + 2.0 * len(freezes), 1.2 + 0.8 * len(regimes)))
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(freezes)), freezes)
        ax.set_yticks(range(len(regimes)), regimes)
        for i, g in enumerate(regimes):
            for j, f in enumerate(freezes):
                r = best.get((g, f))
                text = "-" if r is None else _pm(r.val_acc, r.val_std).replace(" ± ", "\n± ")
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    color="k" if r is None or r.val_acc >= 0.6 else "w",
                    fontsize=9,
                )
        ax.set_title("best target val accuracy per paradigm")
        fig.colorbar(im, ax=ax, fraction=0.04)
        fig.tight_layout()
        fig.savefig(out_dir / "paradigm_heatmap.png", dpi=110)
        plt.close(fig)

    import optuna
    from optuna.visualization import matplotlib as ovm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's matplotlib backend is "experimental"
        try:
            ax = ovm.plot_optimization_history(study)
            ax.figure.set_size_inches(8, 4.5)
            ax.figure.tight_layout()
            ax.figure.savefig(out_dir / "optimization_history.png", dpi=110)
            plt.close(ax.figure)
        except Exception as e:  # e.g. no completed trial yet
            log.info("no optimization history plot: %s", e)
        try:
            # fANOVA, named explicitly: Optuna 5's default evaluator is PED-ANOVA.
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            ax = ovm.plot_param_importances(study, evaluator=evaluator)
            ax.set_title("Parameter importances for the objective (fANOVA)")
            ax.figure.set_size_inches(8, 4.5)
            ax.figure.tight_layout()
            ax.figure.savefig(out_dir / "param_importances.png", dpi=110)
            plt.close(ax.figure)
        except Exception as e:  # needs 2+ completed trials with varying parameters
            log.info("no parameter importance plot: %s", e)


def log_to_parent(study: Any, parent: Any) -> str:
    """Write the summary into the parent run (artifacts under summary/, headline metrics, tags);
    returns the paradigm table (markdown)."""
    with tempfile.TemporaryDirectory() as tmp:
        head = write(study, Path(tmp))
        parent.log_dir(Path(tmp), "summary")
        table = (Path(tmp) / "paradigm_table.md").read_text(encoding="utf-8")
    parent.log_metrics({k: head[k] for k in ("n_trials", "n_complete", "n_failed", "n_pruned")})
    if "best" in head:
        b: Row = head["best"]
        parent.log_metrics(
            {
                "best_val_acc": b.val_acc,
                "best_test_acc": b.test_acc or math.nan,
                "best_trial": b.number,
            }
        )
        parent.set_tags(
            {"best_paradigm": b.paradigm.name, "best_run_id": b.run_id, "best_trial": str(b.number)}
        )
    return table
