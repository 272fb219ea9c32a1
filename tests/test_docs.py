"""The README and docs/ link to each other: every relative link names a file that exists, and
every #anchor a heading of that file (GitHub's anchor rule)."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT, cli

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def prose(path) -> str:
    """A markdown file without its code blocks (their `#` lines and brackets are not markdown)."""
    return re.sub(r"```.*?```", "", path.read_text(), flags=re.S)


def anchors(path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#{1,6} (.+)$", prose(path), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(doc):
    broken = []
    for target in LINK.findall(prose(doc)):
        if re.match(r"[a-z]+:", target):
            continue  # http(s):, mailto: ...
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target}: no file {path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.name}")
    assert not broken, "\n".join(broken)


def test_the_readme_stays_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_help_is_the_purpose_examples_and_groups_not_a_config_dump(tmp_path):

    out = cli(["--help"], cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("transfersweep: find the best way")
    assert text.count("\n  transfersweep ") == 5  # five examples
    assert "backbone: " in text and "lite0" in text  # the groups and their options
    assert "name: resnet18" not in text and len(text.splitlines()) < 40  # no config dump

    predict = cli(["--help"], cwd=tmp_path, timeout=120, module="transfersweep.predict")
    assert predict.returncode == 0 and predict.stdout.startswith("usage: transfersweep-predict")


def test_make_clean_removes_everything_under_outputs_but_the_placeholder(tmp_path):
    import subprocess

    out = tmp_path / "outputs"
    for p in ("runs/2026-12-04/x/log", "sweeps/a/b", "mlflow.db", "optuna.db.lock",
              "resume/k/state.json", "server/mlflow.db", "cache/k/model.safetensors", ".gitkeep"):  # fmt: skip
        (out / p).parent.mkdir(parents=True, exist_ok=True)
        (out / p).write_text("x")
    res = subprocess.run(["make", "--no-print-directory", "clean", f"OUTPUTS={out}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert [p.name for p in out.iterdir()] == [".gitkeep"]
