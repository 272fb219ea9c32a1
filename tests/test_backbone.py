"""Backbones and weights: local files (safetensors / .pth), head mismatch, bad files, names, offline hub."""

from __future__ import annotations

import time
from pathlib import Path

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


def _not_weights(tmp_path) -> dict[str, tuple[Path, str]]:
    """Files that are not weights, each with what the error must say it is."""
    good = tmp_path / "good.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=3).state_dict(), str(good))
    files = {
        "garbage": (bytes(range(256)) * 4, ".pth", "is not a weights file (neither safetensors nor torch"),
        "truncated": (good.read_bytes()[:-1000], ".safetensors", "is a truncated safetensors file (its tensors need"),
        "log": (b"epoch 1 loss 0.3\nepoch 2 loss 0.2\n", ".safetensors", "is a text file, not weights (it starts: 'epoch 1 loss 0.3')"),
        "empty": (b"", ".pth", "is an empty file (0 bytes)"),
    }  # fmt: skip
    out = {}
    for name, (data, suffix, says) in files.items():
        (tmp_path / f"{name}{suffix}").write_bytes(data)
        out[name] = (tmp_path / f"{name}{suffix}", says)

    class Evil:
        def __reduce__(self):
            return (exec, ("print('pwned')",))

    torch.save({"x": Evil()}, tmp_path / "code.pth")
    out["code"] = (tmp_path / "code.pth", "is a pickle that holds Python objects (exec)")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a whole module, pickled
    out["module"] = (tmp_path / "module.pth", "is a pickle that holds Python objects (torch.nn")
    return out


def test_missing_or_not_weights_files_say_what_they_are(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        backbone.create(_cfg(tmp_path / "nope.safetensors"), num_classes=3)
    for path, says in _not_weights(tmp_path).values():
        with pytest.raises(WeightsError) as e:
            backbone.create(_cfg(path), num_classes=3)
        assert says in str(e.value) and str(path) in str(e.value)
        assert "\n" not in str(e.value)  # one line


@pytest.mark.slow
def test_not_weights_files_exit_2_with_one_line_in_seconds(tmp_path):
    """The real entrypoint: each bad file is one error line naming it, exit code 2, before
    any training (and without torch's long weights_only explanation)."""
    for name, (path, says) in _not_weights(tmp_path).items():
        t = time.perf_counter()
        res = cli(
            [*FAST, f"backbone.weights={path}", f"paths.outputs={tmp_path / name}"], cwd=tmp_path
        )
        elapsed = time.perf_counter() - t
        out = res.stdout + res.stderr
        assert res.returncode == 2, (name, out[-2000:])
        errors = [line for line in out.splitlines() if "error:" in line]
        assert len(errors) == 1 and says in errors[0] and str(path) in errors[0], (name, errors)
        assert "weights_only" not in out.replace("weights_only=True", "") and "Traceback" not in out
        assert "pwned" not in out  # no pickled code ran
        assert elapsed < 30, (name, elapsed)


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
