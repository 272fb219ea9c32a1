"""A regime's stages say what they train: epochs, learning rate, strategy, loss and where their
weights start, each by stage or by data kind; the losses registry; self-distillation and a
per-stage learning rate run in a real sweep."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import FAST, child_runs, cli, compose, history, runs, sweep_parent
from transfersweep import inputs, losses, regime, reuse, stages, train
from transfersweep.config import StageData
from transfersweep.errors import ConfigError
from transfersweep.validation import validate


def _stages(spec: str, *more: str):
    return f"regime.stages={spec}", *more


def test_a_stage_sets_its_epochs_rate_strategy_and_loss_and_the_rest_comes_from_its_kind():
    cfg = compose(
        [
            *FAST,
            "optimizer.lr=0.002",
            "optimizer.source_lr=0.004",
            "loss.label_smoothing=0.1",
            *_stages(
                "[{name:pre,data:source},"
                "{name:probe,data:target,epochs:7,lr_scale:10,freeze:{strategy:last_layer}},"
                "{name:again,data:target,lr:0.0005,init:start,"
                "loss:{name:distill,temperature:3.0,weight:0.8}}]"
            ),
        ]
    )
    validate(cfg)
    data = inputs.load(cfg).data
    pre, probe, again = regime.plan(cfg, data)
    # by kind: source stages pretrain everything on plain cross-entropy at source_lr
    assert (pre.data, pre.epochs, pre.lr) == (StageData.source, 1, 0.004)
    assert pre.strategy.name == "full" and pre.loss == losses.CrossEntropy()
    assert pre.init == "previous"
    # its own: 7 epochs, 10x optimizer.lr, a linear probe; the run's loss (label smoothing)
    assert (probe.epochs, probe.lr, probe.strategy.name) == (7, pytest.approx(0.02), "last_layer")
    assert probe.strategy.norm_stats == cfg.freeze.norm_stats  # the run's BatchNorm choice
    assert probe.loss == losses.CrossEntropy(label_smoothing=0.1)
    # an absolute rate, the run's strategy, a fresh copy, distillation
    assert (again.epochs, again.lr, again.strategy.name) == (2, 0.0005, "full")
    assert again.init == "start"
    assert again.loss == losses.Distill(temperature=3.0, weight=0.8)


@pytest.mark.parametrize(
    "stages_spec,message",
    [
        (
            "[{name:t,data:target},{name:t,data:target}]",
            r"regime\.stages\[1\]\.name='t' is used twice",
        ),
        ("[{name:t,data:target,epochs:0}]", r"regime\.stages\[0\]\.epochs=0 is invalid"),
        ("[{name:t,data:target,lr_scale:-1}]", r"regime\.stages\[0\]: learning rate -0\.001"),
        ("[{name:t,data:target,init:scratch}]", r"regime\.stages\[0\]\.init='scratch' is invalid"),
        (
            "[{name:s,data:source,init:start},{name:t,data:target}]",
            r"regime\.stages\[0\]\.init=start is for stages that see target data",
        ),
        (
            "[{name:t,data:target,freeze:{strategy:last_blocks,n_blocks:0}}]",
            r"regime\.stages\[0\]\.freeze: freeze\.n_blocks",
        ),
        (
            "[{name:t,data:target,loss:{name:focal}}]",
            r"regime\.stages\[0\]\.loss\.name='focal' is not a loss: choose one of ce, distill",
        ),
        (
            "[{name:t,data:target,loss:{name:distill}}]",
            r"regime\.stages\[0\]\.loss\.name=distill in the first stage",
        ),
        (
            "[{name:s,data:source},{name:t,data:target,loss:{name:distill}}]",
            r"regime\.stages\[1\]\.loss\.name=distill: stage 1 trains on target data but its "
            r"teacher \(stage 0\) on source data",
        ),
        (
            "[{name:t,data:target},{name:u,data:target,loss:{name:distill,teacher:start}}]",
            r"regime\.stages\[1\]\.loss\.teacher='start' is invalid",
        ),
    ],
)
def test_a_bad_stage_key_is_named_with_its_fix(stages_spec, message):
    cfg = compose([*FAST, *_stages(stages_spec)])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_the_run_wide_loss_is_checked_too():
    with pytest.raises(ConfigError, match=r"loss\.label_smoothing=1\.0 is invalid"):
        validate(compose([*FAST, "loss.label_smoothing=1.0"]))


def test_distillation_is_hintons_loss():
    torch.manual_seed(0)
    student = torch.randn(6, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    x = torch.randn(6, 4)
    head = torch.nn.Linear(4, 5)  # a joint teacher: 3 target classes first, then 2 source ones
    soft = head(x).detach()[:, :3]
    t, w = 3.0, 0.7
    loss = losses.Distill(temperature=t, weight=w)(student, y, x, teacher=head)
    expected = w * t * t * F.kl_div(
        F.log_softmax(student / t, 1), F.softmax(soft / t, 1), reduction="batchmean"
    ) + (1 - w) * F.cross_entropy(student, y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # only soft targets, T=1: the gradient pulls the student's softmax onto the teacher's
    only_soft = losses.Distill(temperature=1.0, weight=1.0)
    (grad,) = torch.autograd.grad(only_soft(student, y, x, head), student)
    torch.testing.assert_close(grad, (student.softmax(1) - soft.softmax(1)).detach() / 6)
    assert head.weight.grad is None  # the teacher does not learn
    smooth = losses.CrossEntropy(label_smoothing=0.2)(student, y, x)
    assert smooth.item() == pytest.approx(F.cross_entropy(student, y, label_smoothing=0.2).item())


def test_self_distillation_trains_a_fresh_copy_from_the_first_models_predictions(
    tmp_path, monkeypatch
):
    """The student starts from the weights the teacher started from (not the teacher's), and
    learns from a frozen copy of the teacher stage's result."""
    seen = []
    real_run = stages.run

    def spy(ready, cfg, stage, prefix, seed, mlrun, report=None, teacher=None):
        start = {k: v.clone() for k, v in ready.model.state_dict().items()}
        out = real_run(ready, cfg, stage, prefix, seed, mlrun, report, teacher)
        teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()} if teacher else None
        seen.append((prefix, start, out, teacher_state))
        return out

    monkeypatch.setattr(stages, "run", spy)
    cfg = compose([*FAST, "regime=self_distill", "trainer.repeats=2"], tmp_path)
    train.run(cfg)
    assert [s[0] for s in seen] == ["teacher", "student", "teacher_r1", "student_r1"]
    for (_, t_start, t_out, _), (_, s_start, _, s_teacher) in (seen[0:2], seen[2:4]):
        body = [k for k in t_start if not k.startswith("fc.")]  # the head is fresh each stage
        for k in body:
            assert torch.equal(s_start[k], t_start[k]), k  # a fresh copy, not the teacher
        assert any(not torch.equal(t_out.best_state[k], t_start[k]) for k in body)
        for k, v in t_out.best_state.items():  # the teacher: that stage's best weights, head too
            assert torch.equal(s_teacher[k], v), k


def test_the_feature_cache_is_off_when_a_teacher_needs_the_images(tmp_path):
    """A probe (head alone) normally trains on cached features; a distilling one cannot."""
    cfg = compose(
        [
            *FAST,
            *_stages(
                "[{name:t,data:target,freeze:{strategy:last_layer}},"
                "{name:u,data:target,freeze:{strategy:last_layer},loss:{name:distill}}]"
            ),
        ],
        tmp_path,
    )
    train.run(cfg)
    (run,) = runs(tmp_path)[1]
    assert run.data.tags["t/feature_cache"] == "on"
    assert run.data.tags["u/feature_cache"] == "off: loss distill: the teacher sees the images"


def test_pretrain_reuse_keys_on_what_a_source_stage_carries():
    base = [*FAST, "regime=pretrain_finetune"]

    def key(*more):
        return reuse.key(compose([*base, *more]), 0, "fp32")

    same = key()
    assert key() == same
    assert key("regime.stages.0.epochs=3") != same
    assert key("regime.stages.0.lr_scale=0.5") != same
    assert key("regime.stages.0.loss={name:ce,label_smoothing:0.1}") != same
    assert key("regime.stages.1.epochs=3") == same  # a later stage: not this one's input
    assert key("loss.label_smoothing=0.1") == same  # the target stages' loss


@pytest.mark.slow  # a real grid sweep of both yamls
def test_self_distillation_and_a_per_stage_rate_run_in_a_sweep(outputs):
    out = cli(
        [
            "-m",
            "sweep=grid",
            *FAST,
            "regime=choice(self_distill,joint_finetune)",
            "search.strategies=[full]",
            "optimizer.lr=0.002",
            "optimizer.warmup_epochs=0",
            f"paths.outputs={outputs}",
            "hydra.sweeper.study_name=stages",
        ],  # fmt: skip
        outputs.parent,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    client, found = runs(outputs)
    trials = {r.data.tags["regime"]: r for r in child_runs(found, sweep_parent(found))}
    assert set(trials) == {"self_distill", "joint_finetune"}
    assert all(r.info.status == "FINISHED" for r in trials.values())
    distilled = trials["self_distill"]
    assert "student/best_val_acc" in distilled.data.metrics
    assert "repeat/val_acc" in distilled.data.metrics
    finetune = trials["joint_finetune"]
    lrs = history(client, finetune, "finetune/lr")
    assert len(lrs) == 10  # the stage's own epochs (trainer.target_epochs=2 elsewhere)
    # its own rate: 0.1 x optimizer.lr at epoch 1, cosine from there
    assert lrs[0] == (1, pytest.approx(0.0002))
    assert len(history(client, finetune, "joint/lr")) == 2
