"""Backbones and weights: local files (safetensors / .pth), head mismatch, bad files, names, offline hub."""

from __future__ import annotations

import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import FAST, cli, compose
from transfersweep import backbone
from transfersweep.errors import ConfigError, WeightsError


def _cfg(weights=None, name="tiny"):
    over = [f"backbone={name}"] + ([f"backbone.weights={weights}"] if weights else [])
    return compose(over)


def test_safetensors_weights_load_and_a_different_head_is_replaced(tmp_path):
    torch.manual_seed(1)
    src = timm.create_model("test_resnet", num_classes=7)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    model = backbone.create(_cfg(tmp_path / "w.safetensors"), num_classes=3)
    own = model.state_dict()
    for k, v in src.state_dict().items():
        if k.startswith("fc."):
            assert own[k].shape[0] == 3  # fresh head for 3 classes
        else:
            assert torch.equal(own[k], v), k


def test_pth_state_dict_in_a_wrapper_loads_without_unpickling_objects(tmp_path):
    src = timm.create_model("test_resnet", num_classes=3)
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3},
        tmp_path / "w.pth",
    )
    model = backbone.create(_cfg(tmp_path / "w.pth"), num_classes=3)
    assert torch.equal(model.fc.weight, src.fc.weight)  # same-shape head is kept

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="weights_only"):
        backbone.create(_cfg(tmp_path / "evil.pth"), num_classes=3)


def test_weights_of_another_backbone_are_refused_with_the_reason(tmp_path):
    other = timm.create_model("test_vit", num_classes=3)
    save_file(other.state_dict(), str(tmp_path / "vit.safetensors"))
    with pytest.raises(WeightsError, match=r"does not fit backbone .*missing from the file"):
        backbone.create(_cfg(tmp_path / "vit.safetensors"), num_classes=3)
    wide = {k: v for k, v in timm.create_model("test_resnet", num_classes=3).state_dict().items()}
    first_conv = next(k for k, v in wide.items() if v.ndim == 4)
    wide[first_conv] = torch.zeros(1, 3, 3, 3)
    save_file(wide, str(tmp_path / "shape.safetensors"))
    with pytest.raises(WeightsError, match=rf"1 with other shapes .*{first_conv} \(1, 3, 3, 3\)"):
        backbone.create(_cfg(tmp_path / "shape.safetensors"), num_classes=3)


def test_missing_or_garbage_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        backbone.create(_cfg(tmp_path / "nope.safetensors"), num_classes=3)
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        backbone.create(_cfg(tmp_path / "junk.safetensors"), num_classes=3)


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(
        ConfigError,
        match=r"backbone\.name='resnet181' is not a timm model\. Did you mean: .*resnet18",
    ):
        backbone.check_name("resnet181")
    backbone.check_name("resnet18.a1_in1k")  # a pretrained tag is fine


def test_bad_kwargs_name_the_key():
    cfg = compose(["backbone=tiny", "+backbone.kwargs.wings=3"])
    with pytest.raises(
        ConfigError, match=r"backbone\.kwargs=\{'wings': 3\} does not fit test_resnet: .*wings"
    ):
        backbone.create(cfg, num_classes=3)


def test_pretrained_offline_fails_fast_with_a_fix(tmp_path):
    """The real entrypoint, no HF_HUB_OFFLINE preset: the probe must avoid a minute of retries."""
    t = time.perf_counter()
    res = cli(
        [*FAST, "backbone.name=resnet18", "backbone.pretrained=true", f"paths.outputs={tmp_path}"],
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": ""},
    )
    elapsed = time.perf_counter() - t
    assert res.returncode == 2, res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert "backbone.pretrained=true needs timm hub weights for 'resnet18'" in out
    assert "backbone.weights=" in out  # names the offline fix
    assert elapsed < 45, f"offline failure took {elapsed:.0f}s"
    assert not (tmp_path / "mlflow.db").exists()  # failed before any run was opened
