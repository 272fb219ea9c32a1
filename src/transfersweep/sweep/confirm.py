"""Confirmation against the winner's curse.

The search picks each paradigm's best trial on the very validation repeats it then reports,
so the top of the table is optimistic. After the search, the best configuration of each of
the `top_k` best paradigms is run again on `repeats` fresh repeats (indices from
`first_repeat` on: k-shot draws and seeds the search never used), as nested MLflow runs
tagged `confirm=true` under the sweep's parent run. The verdict and the champion come from
these runs when they exist. They are plain runs, not Optuna trials: the study (and what TPE
learns from it) holds the search alone. A confirmation run already FINISHED under the parent
with the same key (trial, first repeat, repeats) is reused, so re-running a finished sweep
costs nothing.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transfersweep.scores import SUMMARY, Record
from transfersweep.sweep import sampling
from transfersweep.sweep.hydra_optuna import SearchSpace
from transfersweep.sweep.row import Row

log = logging.getLogger("transfersweep.sweep")


@dataclass
class ConfirmSettings:
    top_k: int = 0  # 0: no confirmation
    repeats: int = 5
    first_repeat: int = 1000  # fresh repeat indices: the search uses 0 .. trainer.repeats-1


def candidates(best: dict[tuple[str, str], Row], top_k: int) -> list[Row]:
    """The best trial of each of the top_k paradigms, best first."""
    ranked = sorted(best.values(), key=lambda r: (-(r.value or 0.0), r.number))
    return ranked[:top_k]


def key(row: Row, s: ConfirmSettings) -> str:
    return f"trial{row.number}:r{s.first_repeat}+{s.repeats}"


def overrides(
    row: Row,
    space: SearchSpace,
    strategy_of: Callable[[Any], Any],
    s: ConfirmSettings,
    parent_run_id: str,
) -> tuple[str, ...]:
    own = {
        "trainer.repeats": s.repeats,
        "trainer.first_repeat": s.first_repeat,
        "tracking.parent_run_id": parent_run_id,
    }
    kept = tuple(
        o for o in sampling.replay(row.params, space, strategy_of) if o.split("=")[0] not in own
    )
    return (
        kept
        + tuple(f"{k}={v}" for k, v in own.items())
        + (
            "+tracking.tags.confirm='true'",
            f"+tracking.tags.confirms_trial='{row.number}'",
            f"+tracking.tags.confirm_key='{key(row, s)}'",
        )
    )


def _finished(parent: Any) -> dict[str, Any]:
    """The FINISHED confirmation runs under the parent, by key."""
    found = parent.client.search_runs(
        [parent.experiment_id],
        filter_string=(
            f"tags.`mlflow.parentRunId` = '{parent.run_id}' and tags.confirm = 'true' "
            "and attributes.status = 'FINISHED'"
        ),
        max_results=1000,
    )
    return {r.data.tags["confirm_key"]: r for r in found if "confirm_key" in r.data.tags}


def _record(client: Any, run_id: str) -> Record | None:
    """The run's Record, from its summary.json (what transfersweep.results wrote)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, SUMMARY, tmp)
        return Record.of_summary(json.loads(Path(path).read_text()))


def as_row(searched: Row, run: Any, client: Any) -> Row:
    """The searched trial's row with the confirmation run's numbers."""
    return replace(
        searched,
        record=_record(client, run.info.run_id),
        target_seconds=run.data.metrics.get("target_seconds"),
        run_id=run.info.run_id,
    )


def run(
    best: dict[tuple[str, str], Row],
    s: ConfirmSettings,
    space: SearchSpace,
    strategy_of: Callable[[Any], Any],
    parent: Any,
    launch: Callable[[list[tuple[str, ...]]], list[Any]],
) -> list[Row]:
    """Confirm the top paradigms (launching only those not confirmed yet); returns their rows
    with the confirmation numbers, best search rank first."""
    top = candidates(best, s.top_k)
    if len(top) < 1:
        return []
    done = _finished(parent)
    todo = [r for r in top if key(r, s) not in done]
    log.info(
        "confirmation: the best configuration of the top %d paradigm(s) on %d fresh repeats "
        "(indices %d..%d)%s: %s",
        len(top), s.repeats, s.first_repeat, s.first_repeat + s.repeats - 1,
        f", {len(top) - len(todo)} already done" if len(todo) < len(top) else "",
        ", ".join(f"#{r.number} {r.paradigm.name}" for r in top),
    )  # fmt: skip
    if todo:
        jobs = [overrides(r, space, strategy_of, s, parent.run_id) for r in todo]
        for r, ret in zip(todo, launch(jobs), strict=True):
            try:
                ret.return_value  # noqa: B018  (raises the job's exception)
            except Exception as e:
                log.warning("confirmation of #%d %s failed: %s", r.number, r.paradigm.name, e)
        done = _finished(parent)
    confirmed = [as_row(r, done[key(r, s)], parent.client) for r in top if key(r, s) in done]
    for r in confirmed:
        ci = f" ± {r.ci:.4f}" if r.ci is not None else ""
        log.info(
            "confirmed #%d %s: %s %.4f%s (n=%d, search: %.4f)",
            r.number, r.paradigm.name, r.objective, r.value, ci, r.n, best[r.cell].value,
        )  # fmt: skip
    return confirmed
