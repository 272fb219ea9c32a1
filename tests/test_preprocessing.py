"""timm's preprocessing, once: the images a run trains and evaluates on (decoded, resized and
cropped once into the uint8 cache) are, pixel for pixel, what its checkpoint's predict sees."""

from __future__ import annotations

import numpy as np
import torch

from conftest import FAST, cli, runs, write_image_folder


def test_train_and_predict_see_the_same_pixels(outputs, tmp_path):
    root = tmp_path / "photos"
    for split, n in (("train", 6), ("val", 3), ("test", 3)):  # odd, non-square images
        write_image_folder(root / split, {"a": n, "b": n}, size=37, seed=len(split))
    res = cli(
        [*FAST, "data=imagefolder", f"data.target.root={root}", "regime=target_only",
         "data.image_size=24", "data.crop_pct=0.8", "data.interpolation=bicubic",
         f"paths.outputs={outputs}"],
        cwd=outputs,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    client, (run,) = runs(outputs)
    folder = client.download_artifacts(run.info.run_id, "checkpoint", str(tmp_path))

    from omegaconf import OmegaConf

    from transfersweep import data as data_mod
    from transfersweep.data.images import list_image_files
    from transfersweep.predict import Predictor

    predictor = Predictor.from_folder(folder)
    cfg = OmegaConf.load(f"{folder}/config.yaml").config
    assert (cfg.data.image_size, cfg.data.crop_pct, cfg.data.interpolation) == (24, 0.8, "bicubic")
    trained = data_mod.build(cfg, need_source=False).target.test.images  # the run's cache
    files = [f for c in ("a", "b") for f in list_image_files(root / "test" / c)]
    seen = predictor.to_uint8(files)
    assert seen.shape == trained.shape == (6, 3, 24, 24)
    assert torch.equal(seen, trained)
    # arrays given to predict go through the same resize and crop as files
    from PIL import Image

    arrays = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    assert torch.equal(predictor.to_uint8(arrays), trained)
