"""Confidence intervals, paired tests and the verdict against hand computations."""

from __future__ import annotations

import math

import pytest

from transfersweep import stats
from transfersweep.paradigm import Paradigm
from transfersweep.scores import Record
from transfersweep.sweep.row import Row
from transfersweep.sweep.verdict import decide


def test_ci_is_the_student_t_half_width():
    e = stats.estimate([0.80, 0.90, 0.85, 0.95])
    sd = math.sqrt(sum((x - 0.875) ** 2 for x in [0.80, 0.90, 0.85, 0.95]) / 3)
    assert e.mean == pytest.approx(0.875) and e.std == pytest.approx(sd) and e.n == 4
    assert e.ci95 == pytest.approx(3.182446305284263 * sd / 2)  # t(0.975, df=3)
    assert (e.low, e.high) == (pytest.approx(0.875 - e.ci95), pytest.approx(0.875 + e.ci95))
    one = stats.estimate([0.7])
    assert (one.mean, one.std, one.ci95) == (0.7, 0.0, None)


def test_paired_t_test_by_hand():
    a = {0: 0.90, 1: 0.80, 2: 0.85, 3: 0.95, 7: 0.5}
    b = {0: 0.80, 1: 0.75, 2: 0.80, 3: 0.88, 9: 0.9}  # 7 and 9 are not common: ignored
    p = stats.paired(a, b)
    # differences .10 .05 .05 .07: mean .0675, sd .0236291, t = .0675 / (sd / 2) = 5.7134
    assert p.n == 4 and p.diff == pytest.approx(0.0675)
    from scipy.stats import t

    assert p.p == pytest.approx(2 * t.sf(0.0675 / (0.0236290781 / 2), 3), rel=1e-6)
    assert stats.paired({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5}).p is None  # too few to test
    assert stats.paired({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.5, 1: 0.6, 2: 0.7}).p == 1.0


def test_holm_by_hand():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def _row(number: int, regime: str, strategy: str, vals: list[float]) -> Row:
    record = Record(list(range(len(vals))), scores={"val_acc": vals})
    return Row(
        number, "COMPLETE", Paradigm(regime, strategy, strategy, {}), f"run{number}", {}, "",
        objective="val_acc", record=record,
    )  # fmt: skip


def test_verdict_calls_a_tie_a_tie_and_a_loss_a_loss():
    winner = _row(0, "joint", "full", [0.90, 0.80, 0.95, 0.85, 0.88])
    close = _row(1, "joint", "last_layer", [0.88, 0.84, 0.90, 0.86, 0.86])  # swaps places
    far = _row(2, "target_only", "full", [0.60, 0.52, 0.66, 0.58, 0.61])
    alone = _row(3, "target_only", "last_layer", [0.7])
    v = decide([close, far, winner, alone])
    assert v.winner is winner
    status = {c.row.number: c.status for c in v.comparisons}
    assert status == {0: "winner", 1: "tied", 2: "worse", 3: "untested"}
    assert v.text.startswith("joint+full wins (val 0.876 ± 0.")
    assert "tied with it: joint+last_layer (p=" in v.text and "worse: 1 other(s)" in v.text
    assert "untested: 1" in v.text


def test_verdict_names_the_cheapest_paradigm_tied_with_the_winner():
    winner = _row(0, "joint", "full", [0.90, 0.80, 0.95, 0.85, 0.88])
    close = _row(1, "joint", "last_layer", [0.88, 0.84, 0.90, 0.86, 0.86])
    far = _row(2, "target_only", "last_layer", [0.60, 0.52, 0.66, 0.58, 0.61])
    winner.target_seconds, close.target_seconds, far.target_seconds = 35.0, 2.5, 0.5
    v = decide([winner, close, far])
    assert (
        "cheapest of these: joint+last_layer (2.5 s per repeat against the winner's 35 s)" in v.text
    )
    close.target_seconds = 50.0
    assert (
        "the winner is also the cheapest of these (35 s per repeat)"
        in decide([winner, close, far]).text
    )


def test_verdict_without_repeats_says_untested_and_how_to_test():
    v = decide([_row(0, "joint", "full", [0.9]), _row(1, "joint", "last_layer", [0.8])])
    assert "joint+full ranks first" in v.text and "untested" in v.text
    assert "trainer.repeats>=5" in v.text


def test_a_verdict_of_one_paradigm_says_so_instead_of_asking_for_repeats():
    v = decide([_row(0, "target_only", "full", [0.90, 0.80, 0.95])])
    assert v.text.startswith("target_only+full is the only paradigm scored (val 0.883 ± ")
    assert "untested" not in v.text and "repeats>=" not in v.text
