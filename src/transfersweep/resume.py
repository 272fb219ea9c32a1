"""Mid-run resume: an interrupted run continues from its last complete epoch.

At the end of every epoch the stage in training saves what the next epoch needs: the model,
the optimizer, scheduler and grad scaler, the RNG states (torch, CUDA, numpy, python) and the
data order's generator, the best weights so far, and where the run stands (source stage, or
repeat r's target stage; phase; epoch), with the numbers of the repeats already done. The
state lives under `<paths.outputs>/resume/<key>/`, where the key is the run's identity: its
resolved config without the trial's number and id, and the study in a sweep. The same command
run again, or a sweep's trial queued again after an `interrupted` or `stale` failure (same
parameters), finds it; an edited config does not.

Writes are atomic: tensors go to a fresh `state-*.safetensors` (flushed to disk), then
`state.json` (the commit point) is replaced through a rename; a kill at any moment leaves the
previous commit whole, and files no commit names are never read. The files are removed when
the run finishes (or is pruned, or fails on an error a re-run would repeat); an interrupt or a
kill keeps them. Every epoch is replayed exactly: the MLflow run is continued (transfersweep.
tracking.start), the pruner gets the resumed trial's earlier reports again, and on the same
device and threads the resumed run ends with the metrics of an uninterrupted one.

Nobody carries this state: train.run installs it (transfersweep.progress), and the recipe,
the stage runner and engine.fit reach it through that hook. (Over 400 lines: the run's,
a stage's and an epoch's side of the state, and the format and its atomic writes, together.)
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("transfersweep")

VERSION = 2


@dataclass(frozen=True)
class Point:
    """Where a run stands: the last complete epoch of a stage."""

    stage: int  # index into Inputs.stages
    repeat: int | None  # None: a source stage (trained once, before the repeats)
    phase: int  # index of the strategy's phase within the stage
    epoch: int  # the stage's epoch number (its phases go on counting)

    def where(self, name: str) -> str:
        return name if self.repeat is None else f"{name}, repeat {self.repeat}"


def key(cfg: DictConfig, study: str | None) -> str:
    """The run's identity: what decides its results, in a form that survives a re-run."""
    c = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    c.pop("trial", None)  # a re-queued trial has a new number and id, the same parameters
    c["trainer"].pop("resume", None)
    c["trainer"].pop("resume_every_s", None)  # how often, not what
    c["tracking"].pop("parent_run_id", None)
    doc = {"v": VERSION, "config": c, "study": study}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]


def open_run(cfg: DictConfig, study: str | None, trial: int | None) -> Resume | None:
    """This run's resume state (found or empty), or None when trainer.resume=false or another
    live process runs the same identity (it owns the state; this run goes without)."""
    if not cfg.trainer.resume:
        return None
    root = Path(cfg.paths.outputs).expanduser().resolve() / "resume"
    root.mkdir(parents=True, exist_ok=True)
    k = key(cfg, study)
    lock = _lock(root / f"{k}.lock")
    if lock is None:
        log.warning(
            "another process is running this same config (resume state %s): this run starts "
            "from epoch 1 and saves no resume state",
            root / k,
        )
        return None
    return Resume(
        root / k, k, lock, trial, _load(root / k, k), cfg.trainer.objective,
        float(cfg.trainer.resume_every_s),
    )  # fmt: skip


def _lock(path: Path) -> Any:
    """An exclusive lock on `path`, or None while another process holds it. The owner deletes
    the file when it is done, so a lock taken on a file deleted meanwhile is taken again."""
    while True:
        fh = open(path, "a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino:
                return fh
        except FileNotFoundError:
            pass
        fh.close()


@dataclass
class Saved:
    doc: dict[str, Any]  # state.json
    tensors: dict[str, torch.Tensor]

    @property
    def point(self) -> Point:
        return Point(**self.doc["point"])


@contextmanager
def kept_on_interrupt(state: Resume | None) -> Iterator[None]:
    """The state stays when the run is interrupted (Ctrl-C, SIGTERM), and goes when it ends
    any other way: finished, pruned, or failed on an error that a re-run would repeat."""
    if state is None:
        yield
        return
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        state.keep()
        raise
    except BaseException:
        state.finish()
        raise
    state.finish()


def _load(folder: Path, k: str) -> Saved | None:
    """The last commit, or None (nothing saved, or a commit that cannot be read: said once)."""
    doc_path = folder / "state.json"
    if not doc_path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        doc = json.loads(doc_path.read_text())
        if doc.get("version") != VERSION or doc.get("key") != k:
            raise ValueError(f"written by another version ({doc.get('version')})")
        tensors: dict[str, torch.Tensor] = {}
        for name, size in doc["files"].items():
            path = folder / name
            if not path.is_file() or path.stat().st_size != size:
                raise ValueError(f"{name} is missing or not {size} bytes")
            tensors |= load_file(str(path))
    except Exception as e:  # JSON, sizes, safetensors' own errors: whatever it is, say it
        log.warning("resume state %s unreadable (%s): starting from epoch 1", folder, e)
        return None
    return Saved(doc, tensors)


def _write(path: Path, write: Any) -> None:
    """write(tmp path), flushed to disk, then renamed: readers see all of it or nothing (a
    dead host too: the rename is flushed as well)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_tensors(folder: Path, stem: str, tensors: dict[str, torch.Tensor]) -> tuple[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{stem}-{uuid.uuid4().hex[:8]}.safetensors"  # fresh: never the committed file
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _write(folder / name, lambda p: _write_safetensors(p, data))
    return name, (folder / name).stat().st_size


_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """The safetensors format (8-byte header size, JSON header, raw little-endian data), written
    straight from the tensors' memory: file.write releases the GIL, so training goes on while
    the background writer works (safetensors' own save_file holds it while it copies)."""
    if sys.byteorder != "little":  # raw memory is not the format's byte order: convert
        from safetensors.torch import save_file

        save_file(tensors, str(path))
        return
    header: dict[str, Any] = {}
    offset = 0
    for k, v in tensors.items():
        n = v.numel() * v.element_size()
        header[k] = {
            "dtype": _DTYPES[v.dtype],
            "shape": list(v.shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as fh:
        fh.write(len(head).to_bytes(8, "little") + head)
        for v in tensors.values():
            if v.numel():
                fh.write(memoryview(v.reshape(-1).view(torch.uint8).numpy()))


class Resume:
    """One run's resume state: what was found at the start, and the saving as it goes."""

    def __init__(
        self, folder: Path, k: str, lock: Any, trial: int | None, saved: Saved | None,
        objective: str, every_s: float = 0.0,
    ) -> None:  # fmt: skip
        self.dir, self.key, self._lock, self.trial = folder, k, lock, trial
        self.objective = objective  # trainer.objective: which repeat is the best
        self.saved = saved
        self.point = saved.point if saved else None  # where the found state stands
        doc = saved.doc if saved else {}
        self.run_id: str | None = doc.get("run_id")  # the MLflow run to continue
        self.saved_trial: int | None = doc.get("trial")
        self.reports: list[list[float]] = list(doc.get("reports", []))  # [epoch, value]
        self.repeats: list[dict[str, Any]] = list(doc.get("repeats", []))
        self._extra: dict[str, tuple[str, int]] = {
            k: tuple(v) for k, v in doc.get("extra", {}).items()
        }  # start / best repeat: written once or when they change, not every epoch
        self.elapsed_before = float(doc.get("elapsed_s", 0.0))  # training time before the resume
        self._t0 = time.perf_counter()  # reset by attach, when training starts
        self.mlrun: Any = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resume")
        self._pending: Future | None = None
        self._failed = False
        self._committed = set(doc.get("files", {}))  # files the last commit names
        self.every_s = every_s  # trainer.resume_every_s: an epoch's commit waits this long
        self._last_commit = time.monotonic()  # of the last commit, or of the training's start
        if folder.is_dir():  # torn writes of a killed run, and files no commit names
            for f in folder.iterdir():
                if f.name not in self._committed and f.name != "state.json":
                    f.unlink(missing_ok=True)

    # ----- the run's progress -------------------------------------------------------------

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self._t0

    def attach(self, mlrun: Any, stages: list[Any], pruning: Any) -> None:
        """The run's MLflow run (its metrics written by each commit, before the state) and
        pruner; a resumed run says where it resumed (log, tags) and gives the pruner the
        reports it had made."""
        self.mlrun, self.run_id = mlrun, mlrun.run_id
        mlrun.settle_hooks.append(self.wait)  # the run ends after the write in flight
        self._t0 = time.perf_counter()  # elapsed_s counts training, like the run's seconds
        self._last_commit = time.monotonic()  # the first save comes every_s into training
        p = self.point
        if p is None:
            return
        where = p.where(stages[p.stage].name)
        log.info("resumed from epoch %d (%s), saved in %s", p.epoch, where, self.dir)
        tags = {"resumed_from_epoch": p.epoch, "resumed_stage": where}
        if self.saved_trial is not None and self.saved_trial != self.trial:
            tags["resumed_from_trial"] = self.saved_trial
        mlrun.set_tags(tags)
        if pruning is not None:
            pruning.replay(self.reports)

    def stage(self, index: int, repeat: int | None) -> StageCheckpoint:
        return StageCheckpoint(self, index, repeat)

    def past_source(self) -> bool:
        """The found state is in a target stage: the source stages are done."""
        return self.point is not None and self.point.repeat is not None

    def recording(self, report: Any) -> Any:
        """`report` (the pruner's feed) that also keeps what it was told, for a resumed trial."""

        def record(value: float, epoch: int) -> None:
            self.reports.append([epoch, value])
            report(value, epoch)

        return record

    def set_start(self, state: dict[str, torch.Tensor]) -> None:
        """The model after the source stages (every repeat starts from it)."""
        if "start" not in self._extra:
            self._extra["start"] = _save_tensors(self.dir, "start", _prefixed("start", state))

    def start(self) -> dict[str, torch.Tensor]:
        assert self.saved is not None and "start" in self._extra
        return _unprefixed("start", self.saved.tensors)

    def repeat_done(self, r: Any) -> None:
        """Repeat `r` (stages.RepeatResult) is scored; the best one keeps its weights (the
        run's checkpoint is the best repeat's, first of equals)."""
        objective = self.objective
        if all(r.scores[objective] > d["scores"][objective] for d in self.repeats):
            state = _prefixed("best_repeat", r.last.best_state)
            self._extra["best_repeat"] = _save_tensors(self.dir, "best-repeat", state)
        self.repeats.append(
            {
                "index": r.index, "draw": r.draw, "seconds": r.seconds, "scores": r.scores,
                "best_val": r.last.best_val, "best_epoch": r.last.best_epoch,
            }
        )  # fmt: skip

    def done_repeats(self) -> list[Any]:
        """The repeats the found state had scored, as stages.RepeatResult."""
        from transfersweep.repeats import RepeatResult
        from transfersweep.stages import StageResult

        objective = self.objective
        out, best = [], max(self.repeats, key=lambda d: d["scores"][objective], default=None)
        for d in self.repeats:
            state = _unprefixed("best_repeat", self.saved.tensors) if d is best else {}
            last = StageResult(d["best_val"], d["best_epoch"], state)
            out.append(RepeatResult(d["index"], d["draw"], d["seconds"], dict(d["scores"]), last))
        return out

    # ----- commit, end ------------------------------------------------------------------------

    def due(self) -> bool:
        """Whether an epoch ending now is saved: trainer.resume_every_s of training passed
        since the last save (or the start); otherwise a later epoch saves, and what this one
        did is redone after a kill."""
        return not self._failed and time.monotonic() - self._last_commit >= self.every_s

    def commit(self, point: Point, tensors: dict[str, torch.Tensor], doc: dict[str, Any]):
        """Save one epoch's state. Training goes on while a background thread writes the
        metrics logged up to here (so the store has every epoch the state counts), then a copy
        of the tensors, then state.json naming them (atomic). One write at a time: the next
        commit waits for this one."""
        if not self.due():
            return
        self._last_commit = time.monotonic()
        metrics = self.mlrun.take() if self.mlrun is not None else []
        copy = {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}
        full = doc | {
            "version": VERSION, "key": self.key, "point": dataclasses.asdict(point),
            "run_id": self.run_id, "trial": self.trial, "reports": self.reports,
            "repeats": self.repeats, "extra": self._extra, "elapsed_s": self.elapsed(),
            "saved_at": time.time(),
        }  # fmt: skip
        text = json.dumps(full)  # now: the lists it holds go on growing
        extra = dict(self._extra.values())
        self.wait()
        if not self._failed:
            self._pending = self._writer.submit(self._write_commit, copy, text, extra, metrics)

    def _write_commit(
        self, tensors: dict[str, torch.Tensor], text: str, extra: dict[str, int], metrics: list
    ) -> None:
        if metrics:  # off the training thread; before the state that counts their epochs
            self.mlrun.write(metrics)
        name, size = _save_tensors(self.dir, "state", tensors)
        files = {name: size} | extra
        doc = json.loads(text) | {"files": files}
        _write(self.dir / "state.json", lambda p: p.write_text(json.dumps(doc)))
        for old in self._committed - files.keys():  # the previous commit's, not named now
            (self.dir / old).unlink(missing_ok=True)
        if not self._committed:
            log.info(
                "resume state: %.1f MB in %s, rewritten %s",
                sum(files.values()) / 2**20, self.dir,
                f"after an epoch every {self.every_s:g} s" if self.every_s else "every epoch",
            )  # fmt: skip
        self._committed = set(files)

    def wait(self) -> None:
        """Until the write in flight is on disk; a failed write (disk full) stops the saving,
        not the training."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.result()
        except Exception as e:
            self._failed = True
            log.warning("resume state not saved (%s): training goes on without it", e)

    def finish(self) -> None:
        """The run ended for good: its state goes."""
        import shutil

        self.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        self._unlock()

    def keep(self) -> None:
        """Interrupted: the state stays for the next run of the same command."""
        self.wait()
        if (self.dir / "state.json").is_file():
            log.info("resume state kept in %s: run the same command again to continue", self.dir)
        self._unlock()

    def _unlock(self) -> None:
        self._writer.shutdown(wait=True)
        if not self._lock.closed:
            Path(self._lock.name).unlink(missing_ok=True)  # while still held: see _lock
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()


class StageCheckpoint:
    """One stage's side of the resume state: restores it when the found state stands in this
    stage, and saves each of its epochs."""

    def __init__(self, run: Resume, index: int, repeat: int | None):
        self.run, self.index, self.repeat = run, index, repeat
        p = run.point
        mine = run.saved is not None and p is not None and (p.stage, p.repeat) == (index, repeat)
        self.saved = run.saved if mine else None

    @property
    def saved_phase(self) -> int | None:
        return self.saved.point.phase if self.saved else None

    def restore_model(self, model: torch.nn.Module) -> Any:
        """Load the saved model; returns the saved best of the earlier phases (or None)."""
        from transfersweep.stages import StageResult

        assert self.saved is not None
        t, doc = self.saved.tensors, self.saved.doc
        model.load_state_dict(_unprefixed("model", t))
        b = doc.get("stage_best")
        return StageResult(b["val"], b["epoch"], _unprefixed("stage_best", t)) if b else None

    def phase(self, index: int, model: torch.nn.Module, stage_best: Any) -> FitCheckpoint:
        """Phase `index` of the stage, training (part of) `model`; `stage_best`: the
        stages.StageResult of the phases before it (None in the first)."""
        return FitCheckpoint(self, index, model, stage_best)


class FitCheckpoint:
    """engine.fit's side: restore a phase's optimizer, RNG and best-so-far; save each epoch."""

    def __init__(self, stage: StageCheckpoint, phase: int, model: torch.nn.Module, best: Any):
        self.stage, self.phase, self.model, self.stage_best = stage, phase, model, best

    def restore(self, fit_model, opt, sched, scaler, gen: torch.Generator, result) -> int:
        """Put the saved epoch back (model weights are back already); returns that epoch, or 0
        when this phase has nothing saved."""
        from transfersweep.engine import EpochStats

        saved = self.stage.saved
        if saved is None or saved.point.phase != self.phase:
            return 0
        self.stage.saved = None  # restored once
        t, doc = saved.tensors, saved.doc
        opt.load_state_dict(_optimizer_state(doc["optimizer"], t))
        sched.load_state_dict(doc["scheduler"])
        scaler.load_state_dict(doc["scaler"])
        gen.set_state(t["data_order"])
        f = doc["fit"]
        result.best_val, result.best_epoch = f["best_val"], f["best_epoch"]
        best = _unprefixed("fit_best", t)
        result.best_state = best or {
            k: v.detach().to("cpu", copy=True) for k, v in fit_model.state_dict().items()
        }  # not saved twice when the best epoch was the saved one
        result.history = [EpochStats(**h) for h in f["history"]]
        _set_rng(doc["rng"], t)
        return saved.point.epoch

    def save(self, epoch: int, opt, sched, scaler, gen: torch.Generator, result):
        """Epoch `epoch` is done: the whole model (fit may train only its head or suffix)."""
        st = self.stage
        if not st.run.due():  # not even the state built: an epoch of a short trial is cheap
            return
        tensors = _prefixed("model", self.model.state_dict())
        if result.best_epoch != epoch:
            tensors |= _prefixed("fit_best", result.best_state)
        opt_doc, opt_tensors = _split_optimizer(opt.state_dict())
        tensors |= opt_tensors | {"data_order": gen.get_state()}
        rng_doc, rng_tensors = _rng()
        tensors |= rng_tensors
        doc = {
            "optimizer": opt_doc,
            "scheduler": _jsonable(sched.state_dict()),
            "scaler": scaler.state_dict(),
            "fit": {
                "best_val": result.best_val,
                "best_epoch": result.best_epoch,
                "history": [dataclasses.asdict(h) for h in result.history],
            },
            "rng": rng_doc,
            "stage_best": None,
        }
        if self.stage_best is not None:
            b = self.stage_best
            doc["stage_best"] = {"val": b.best_val, "epoch": b.best_epoch}
            tensors |= _prefixed("stage_best", b.best_state)
        st.run.commit(Point(st.index, st.repeat, self.phase, epoch), tensors, doc)


# ----- (de)serialising ------------------------------------------------------------------------


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v for k, v in state.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    head = f"{prefix}/"
    return {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}


def _jsonable(obj: Any) -> Any:
    """Scheduler state: LambdaLR keeps plain numbers (its lambdas are closures: not saved)."""
    return json.loads(json.dumps(obj, default=lambda o: None))


def _split_optimizer(sd: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    tensors, state = {}, {}
    for idx, entries in sd["state"].items():
        plain = {}
        for name, v in entries.items():
            if torch.is_tensor(v):
                tensors[f"optimizer/{idx}/{name}"] = v
            else:
                plain[name] = v
        state[str(idx)] = plain
    return {"param_groups": sd["param_groups"], "state": state}, tensors


def _optimizer_state(doc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(p) for i, p in doc["state"].items()}
    for k, v in _unprefixed("optimizer", tensors).items():
        idx, name = k.split("/", 1)
        state.setdefault(int(idx), {})[name] = v
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in doc["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def _rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    import numpy as np

    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(keys.astype("int64"))
    version, py_state, gauss = random.getstate()
    doc = {"numpy": [name, pos, has_gauss, cached], "python": [version, list(py_state), gauss]}
    return doc, tensors


def _set_rng(doc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    import numpy as np

    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, cached = doc["numpy"]
    np.random.set_state(
        (name, tensors["rng/numpy"].numpy().astype("uint32"), pos, has_gauss, cached)
    )
    version, py_state, gauss = doc["python"]
    random.setstate((version, tuple(py_state), gauss))
