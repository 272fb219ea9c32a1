"""Rank the candidate backbones before any training, on their frozen pooled features.

For each entry of search.backbones: an eval-mode pass over the target training images of every
k-shot draw the repeats train on (the backbone's own preprocessing, pooled features
`forward_head(..., pre_logits=True)`, what a linear probe sees), then two transferability
scores per draw, averaged over the draws (few labelled images make one draw's score noisy),
each timed:

- **kNN**: leave-one-out accuracy of a k-nearest-neighbour vote (cosine similarity, majority
  vote, ties to the lowest class index as scikit-learn breaks them). Sorkhei et al. (2025,
  arXiv 2503.18528) found over 42,000 experiments that plain kNN beats the published
  transferability metrics; it orders the search by default (`search.prerank.score=knn`).
- **LogME** (You et al., ICML 2021): the per-image log evidence of a Bayesian linear model from
  the features to each class's one-hot column, maximised over its two precisions by the
  paper's fixed-point iteration, averaged over classes. Higher is better.

The ranking orders the search (the best backbone's default paradigm is trial 1), and with
`search.prerank.keep=K` only the top K backbones are searched. It is logged on the sweep's
parent run (summary/prerank.csv, prerank.md, prerank.png; metrics prerank_<score>_<backbone>),
and the summary later sets it beside the accuracy the search measured per backbone, with
Kendall's tau (a few backbones make a coarse tau: n is printed with it).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from transfersweep.errors import ConfigError, TransferSweepError

log = logging.getLogger("transfersweep.sweep")

SCORES = ("knn", "logme")
ATTR = "prerank"  # the study's user attribute: the ranking, for the summary


def knn_loo(features: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Leave-one-out accuracy of a k-NN majority vote on cosine similarity."""
    f = np.asarray(features, dtype=np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)  # an image is not its own neighbour
    k = min(k, len(f) - 1)
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    classes = int(labels.max()) + 1
    votes = np.zeros((len(f), classes))
    np.add.at(votes, (np.arange(len(f))[:, None], labels[nearest]), 1.0)
    return float((votes.argmax(axis=1) == labels).mean())


@dataclass
class Evidence:
    value: float  # log p(y | F, alpha, beta) / N at the maximising alpha, beta
    alpha: float  # the weights' precision
    beta: float  # the noise's precision


def evidence(features: np.ndarray, y: np.ndarray, max_iter: int = 100) -> Evidence:
    """LogME's evidence of one target column y (N,) given features F (N, D) (You et al. 2021,
    Algorithm 1, through the SVD of F): y = F m + e, m ~ N(0, I/alpha), e ~ N(0, I/beta)."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s**2  # the nonzero eigenvalues of F^T F (the other d - r are 0)
    z = u.T @ y
    z2, outside = z**2, float(y @ y - (z**2).sum())  # y's part outside F's column space
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        lam = alpha / beta
        gamma = float((sigma / (sigma + lam)).sum())
        m2 = float((sigma * z2 / (sigma + lam) ** 2).sum())  # |m|^2
        res2 = float((z2 * (lam / (sigma + lam)) ** 2).sum()) + max(outside, 0.0)  # |y - Fm|^2
        alpha, beta = gamma / (m2 + 1e-12), (n - gamma) / (res2 + 1e-12)
        if abs(alpha / beta - lam) <= 1e-6 * lam:
            break
    lam = alpha / beta
    m2 = float((sigma * z2 / (sigma + lam) ** 2).sum())
    res2 = float((z2 * (lam / (sigma + lam)) ** 2).sum()) + max(outside, 0.0)
    logdet = float(np.log(alpha + beta * sigma).sum()) + (d - len(sigma)) * math.log(alpha)
    value = (
        d / 2 * math.log(alpha) + n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi)
        - beta / 2 * res2 - alpha / 2 * m2 - logdet / 2
    )  # fmt: skip
    return Evidence(value / n, alpha, beta)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME: the mean over classes of the evidence of the class's one-hot column."""
    classes = int(labels.max()) + 1
    return float(
        np.mean(
            [evidence(features, (labels == c).astype(np.float64)).value for c in range(classes)]
        )
    )


@dataclass
class Score:
    backbone: str
    knn: float  # mean over the draws
    logme: float
    knn_sd: float  # standard deviation over the draws (0 with one)
    logme_sd: float
    draws: int  # the k-shot draws the repeats train on (1 without k_shot)
    knn_seconds: float  # all draws
    logme_seconds: float
    features_seconds: float  # loading the backbone and images, and the forward passes
    n_images: int  # per draw
    dim: int

    def of(self, name: str) -> float:
        return float(getattr(self, name))


def features_of(cfg: Any, max_images: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The backbone's pooled features of the target training images, as a plain run of `cfg`
    would preprocess them: one (features, labels) per k-shot draw its repeats train on
    (repeats.plan), at most `max_images` each (every n-th beyond)."""
    import torch

    from transfersweep import features, inputs, repeats
    from transfersweep.data import Batches

    ready = inputs.load(cfg)
    out = []
    for draw in dict.fromkeys(r.draw for r in repeats.plan(cfg.trainer)):
        train = ready.data.target.draw(draw).train
        if len(train) > max_images:
            train = train.subset(torch.arange(0, len(train), math.ceil(len(train) / max_images)))
        batches = Batches(train, cfg.trainer.eval_batch_size, shuffle=False)
        got = features.extract(ready.model, batches, ready.preprocess, ready.runtime)
        out.append((got.features.float().cpu().numpy(), got.labels.cpu().numpy()))
    return out


def score(entry: str, cfg: Any, k: int, max_images: int) -> Score:
    t0 = time.perf_counter()
    drawn = features_of(cfg, max_images)
    t1 = time.perf_counter()
    knn = [knn_loo(f, y, k) for f, y in drawn]
    t2 = time.perf_counter()
    lme = [logme(f, y) for f, y in drawn]
    t3 = time.perf_counter()
    f, y = drawn[0]
    return Score(
        entry, float(np.mean(knn)), float(np.mean(lme)), float(np.std(knn)), float(np.std(lme)),
        len(drawn), t2 - t1, t3 - t2, t1 - t0, len(y), f.shape[1],
    )  # fmt: skip


@dataclass
class Ranking:
    scores: list[Score]  # best first by `by`
    by: str  # knn | logme
    kept: list[str]  # the entries the search trains, best first

    @property
    def dropped(self) -> list[str]:
        return [s.backbone for s in self.scores if s.backbone not in self.kept]

    def to_dict(self) -> dict[str, Any]:
        return {"by": self.by, "kept": self.kept, "scores": [asdict(s) for s in self.scores]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ranking:
        return cls([Score(**s) for s in d["scores"]], d["by"], list(d["kept"]))


def check(prerank: Any, n_backbones: int) -> None:
    if prerank.score not in SCORES:
        raise ConfigError(f"search.prerank.score={prerank.score!r}: use one of {', '.join(SCORES)}")
    if prerank.keep < 0 or prerank.k < 1 or prerank.max_images < 2:
        raise ConfigError(
            f"search.prerank: keep={prerank.keep}, k={prerank.k}, max_images="
            f"{prerank.max_images}: use keep >= 0 (0 = every backbone), k >= 1, max_images >= 2"
        )
    if prerank.keep and not prerank.enabled:
        raise ConfigError(
            f"search.prerank.keep={prerank.keep} needs the ranking: search.prerank.enabled=true"
        )
    if prerank.keep > n_backbones:
        raise ConfigError(
            f"search.prerank.keep={prerank.keep} but search.backbones has {n_backbones}: keep at "
            f"most {n_backbones} (0 = all)"
        )


def rank(configs: dict[str, Any], prerank: Any) -> Ranking:
    """Score every backbone (`configs`: entry -> its job config) and rank them."""
    scores = []
    for entry, cfg in configs.items():
        try:
            s = score(entry, cfg, int(prerank.k), int(prerank.max_images))
        except TransferSweepError as e:  # names the bad value and its fix (weights, data, ...)
            raise ConfigError(f"search.backbones: {entry}: {e}") from e
        except Exception as e:  # e.g. a model that cannot take the image size
            raise ConfigError(
                f"search.backbones: {entry} failed on the target images before any training "
                f"({type(e).__name__}: {e}). Fix the backbone's settings or leave it out"
            ) from e
        log.info(
            "prerank %s: kNN (k=%d, leave-one-out) %.3f ± %.3f in %.2fs | LogME %.4f ± %.4f in "
            "%.2fs | %d draw(s) of %d images (%d-d features) in %.1fs",
            entry, prerank.k, s.knn, s.knn_sd, s.knn_seconds, s.logme, s.logme_sd,
            s.logme_seconds, s.draws, s.n_images, s.dim, s.features_seconds,
        )  # fmt: skip
        scores.append(s)
    by = str(prerank.score)
    ordered = sorted(scores, key=lambda s: -s.of(by))  # stable: ties keep the given order
    keep = int(prerank.keep) or len(ordered)
    return Ranking(ordered, by, [s.backbone for s in ordered[:keep]])


def kendall(ranking: Ranking, measured: dict[str, float]) -> dict[str, tuple[float, int]]:
    """Kendall's tau (tau-b) of each score against the measured objective, over the backbones
    both know: name -> (tau, n). NaN when fewer than 2 or no variation."""
    from scipy.stats import kendalltau

    both = [s for s in ranking.scores if s.backbone in measured]
    out = {}
    for name in SCORES:
        if len(both) < 2:
            out[name] = (math.nan, len(both))
            continue
        tau = kendalltau([s.of(name) for s in both], [measured[s.backbone] for s in both]).statistic
        out[name] = (float(tau), len(both))
    return out


def markdown(ranking: Ranking, objective: str, measured: dict[str, float] | None = None) -> str:
    """The ranking as a table; with `measured` (the search's best objective per backbone), that
    column and Kendall's tau of each score against it."""
    lines = [
        f"Pre-ranking of the backbones before training, on frozen pooled features of the target "
        f"training images: mean ± sd over the repeats' k-shot draws (ordered by {ranking.by}; "
        "higher is better)"
        + (f"; searched: {', '.join(ranking.kept)}" if ranking.dropped else "")
        + ".",
        "",
        "| backbone | kNN (LOO) | LogME | draws x images | seconds (features / kNN / LogME) |"
        + (f" best {objective} measured |" if measured is not None else ""),
        "|---|---|---|---|---|" + ("---|" if measured is not None else ""),
    ]
    for s in ranking.scores:
        got = "-"
        if measured is not None:
            got = f"{measured[s.backbone]:.3f}" if s.backbone in measured else "not trained"
        lines.append(
            f"| {s.backbone} | {s.knn:.3f} ± {s.knn_sd:.3f} | {s.logme:.4f} ± {s.logme_sd:.4f} | "
            f"{s.draws} x {s.n_images} | "
            f"{s.features_seconds:.1f} / {s.knn_seconds:.2f} / {s.logme_seconds:.2f} |"
            + (f" {got} |" if measured is not None else "")
        )
    if measured is not None:
        taus = kendall(ranking, measured)
        shown = "; ".join(
            f"{name} {tau:+.2f}" if not math.isnan(tau) else f"{name} -"
            for name, (tau, _) in taus.items()
        )
        n = next(iter(taus.values()))[1]
        lines += ["", f"Kendall's tau against the measured ranking (n={n} backbones): {shown}"]
    return "\n".join(lines) + "\n"


def plot(ranking: Ranking, path: Any) -> None:
    """Two bar charts side by side: kNN accuracy and LogME per backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.backbone for s in ranking.scores]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(names), 3.8))
    for ax, name, label in zip(axes, SCORES, ("kNN leave-one-out accuracy", "LogME"), strict=True):
        colours = ["C0" if n in ranking.kept else "0.7" for n in names]
        ax.bar(range(len(names)), [s.of(name) for s in ranking.scores], color=colours)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(label)
    fig.suptitle("backbones before training (grey: dropped by search.prerank.keep)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_to_parent(ranking: Ranking, parent: Any) -> None:
    import csv
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        with open(out / "prerank.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            fields = list(asdict(ranking.scores[0]))
            w.writerow([*fields, "searched"])
            w.writerows([[*asdict(s).values(), s.backbone in ranking.kept] for s in ranking.scores])
        (out / "prerank.md").write_text(markdown(ranking, ""), encoding="utf-8")
        plot(ranking, out / "prerank.png")
        parent.log_dir(out, "prerank")
    parent.log_metrics(
        {f"prerank_{name}_{s.backbone}": s.of(name) for s in ranking.scores for name in SCORES}
    )


def ordered(
    entries: list[str], configs: Callable[[list[str]], dict[str, Any]], prerank: Any
) -> Ranking | None:
    """The ranking of `entries` (None when it is off)."""
    check(prerank, len(entries))
    if not prerank.enabled:
        return None
    return rank(configs(entries), prerank)
