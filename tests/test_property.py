"""Property: for any values of the main config keys, a run either finishes with a metric in
[0, 1] or stops with a short transfersweep error, and never leaves an MLflow run RUNNING."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import compose, runs
from transfersweep import train
from transfersweep.errors import TransferSweepError

pytestmark = pytest.mark.slow  # 30 hypothesis examples

VALID = {
    "regime": st.sampled_from(["pretrain_finetune", "joint", "pretrain_joint", "target_only"]),
    "freeze": st.sampled_from(["last_layer", "last_blocks", "full"]),
    "freeze.n_blocks": st.integers(1, 5),
    "optimizer.lr": st.floats(1e-6, 10.0),
    "trainer.source_epochs": st.integers(1, 2),
    "trainer.target_epochs": st.integers(1, 3),
    "trainer.repeats": st.integers(1, 2),
    "data.batch_size": st.integers(2, 70),
    "data.image_size": st.sampled_from([8, 12, 16, 20]),
    "data.target.k_shot": st.one_of(st.none(), st.integers(1, 60)),
    "data.val_fraction": st.floats(0.05, 0.5),
    "data.joint_target_share": st.floats(0.01, 0.99),
    "data.augment": st.booleans(),
}


INVALID = {  # every value here is rejected (test_every_bad_value_is_rejected_naming_its_key)
    "freeze.n_blocks": [-1, 0, 6, 9],
    "optimizer.lr": [0.0, -0.1, 1e6],
    "trainer.source_epochs": [0],
    "trainer.target_epochs": [0],
    "trainer.repeats": [0],
    "data.batch_size": [0, 1],
    "data.image_size": [4],
    "data.target.k_shot": [0, 200],
    "data.val_fraction": [0.0, 0.8, 1.0],
    "data.joint_target_share": [0.0, 1.0],
}


@st.composite
def values(draw):
    """Valid values everywhere, and in half of the examples one key set to a bad value."""
    v = {k: draw(s) for k, s in VALID.items()}
    broken = None
    if draw(st.booleans()):
        broken = draw(st.sampled_from(sorted(INVALID)))
        v[broken] = draw(st.sampled_from(INVALID[broken]))
        if broken.startswith("freeze."):
            v["freeze"] = "last_blocks"  # the strategy that has the key
    if v["freeze"] != "last_blocks":
        del v["freeze.n_blocks"]  # a strategy's own key exists only with that strategy
    return v, broken


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("property")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values())
def test_any_config_finishes_or_fails_cleanly(store, example):
    """Valid values finish with a metric in [0, 1] (or fail cleanly: a huge lr may diverge);
    a bad value is always rejected, with an error that names its key."""
    v, broken = example
    overrides = [
        "backbone=tiny",
        "trainer.device=cpu",
        "trainer.threads=1",
        "tracking.log_checkpoint=false",
    ]
    overrides += [f"{k}={'null' if x is None else x}" for k, x in v.items()]
    try:
        value = train.run(compose(overrides, store))
    except TransferSweepError as e:
        event(f"error: {type(e).__name__} {str(e).split('=')[0]}")
        assert 0 < len(str(e)) < 600, str(e)
        if broken is not None:
            assert broken in str(e) or _sum_key(broken) in str(e), (broken, str(e))
    else:
        event("finished")
        assert broken is None, f"{broken}={v[broken]} was accepted"
        assert math.isfinite(value) and 0.0 <= value <= 1.0
    _, found = runs(store)
    assert not any(r.info.status == "RUNNING" for r in found)


def _sum_key(key: str) -> str:
    """val_fraction=0.8 can fail as the sum with test_fraction (its own, clearer message)."""
    return "data.val_fraction+data.test_fraction" if key == "data.val_fraction" else key


BAD = [(k, x) for k, xs in INVALID.items() for x in xs]


@pytest.mark.parametrize(("key", "bad"), BAD, ids=[f"{k}={x}" for k, x in BAD])
def test_every_bad_value_is_rejected_naming_its_key(store, key, bad):
    """Each invalid value above, alone among defaults: rejected before anything trains (the
    random examples cannot promise to draw every one)."""
    overrides = ["backbone=tiny", "trainer.device=cpu", "trainer.threads=1", f"{key}={bad}"]
    if key.startswith("freeze."):
        overrides.append("freeze=last_blocks")
    with pytest.raises(TransferSweepError) as e:
        train.run(compose(overrides, store))
    assert key in str(e.value) or _sum_key(key) in str(e.value), str(e.value)
