"""The sweep's PNGs on the parent run: the paradigm heatmap, the Pareto front, Optuna's
optimisation history and parameter importances (PNGs only: plotly HTML would fetch plotly from
the internet when opened). matplotlib is imported here alone, when a summary is written."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

from transfersweep.sweep.row import Row, pm

log = logging.getLogger(__name__)


def pareto(trials: list[Row], front: list[Row], objective: str, path: Path) -> None:
    """Every completed trial (accuracy against cost), the front joined and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in trials if r.state == "COMPLETE" and r.target_seconds is not None]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter([r.target_seconds for r in done], [r.value for r in done], c="0.6", label="trials")
    xs, ys = [r.target_seconds for r in front], [r.value for r in front]
    ax.plot(xs, ys, "o-", color="C3", label="Pareto front")
    for r in front:
        if r.ci is not None:
            ax.errorbar(r.target_seconds, r.value, yerr=r.ci, color="C3", capsize=3)
        ax.annotate(f"#{r.number} {r.paradigm.name}", (r.target_seconds, r.value), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("target stages: training seconds per repeat (log)")
    ax.set_ylabel(f"target {objective} (mean, 95% CI)")
    ax.set_title(f"{objective} against training cost")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def paradigms(
    study: Any,
    best: dict[tuple[str, str], Row],
    layout: tuple[list[str], list[str]],
    objective: str,
    out_dir: Path,
) -> None:
    """The regime x strategy heatmap (`layout`: its rows and columns), then Optuna's history
    and fANOVA importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if best:
        regimes, freezes = layout
        grid = [
            [best[(g, f)].value if (g, f) in best else math.nan for f in freezes] for g in regimes
        ]
        fig, ax = plt.subplots(figsize=(1.5 + 2.0 * len(freezes), 1.2 + 0.8 * len(regimes)))
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(freezes)), freezes)
        ax.set_yticks(range(len(regimes)), regimes)
        for i, g in enumerate(regimes):
            for j, f in enumerate(freezes):
                r = best.get((g, f))
                text = "-" if r is None else pm(r.value, r.ci).replace(" ± ", "\n± ")
                text += "" if r is None else f"\nn={r.n}"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    color="k" if r is None or (r.value or 0.0) >= 0.6 else "w",
                    fontsize=9,
                )
        ax.set_title(f"best target {objective} per paradigm (mean ± 95% CI)")
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
