"""Experiment tracking with MLflow: runs, their params, metrics and files (MLflow's "tracking";
src.serving.registry holds its "model registry", src.tracking.store the client and store errors).

One MLflow run per training. The evaluate and sample stages add to the run that made the
checkpoint (its id travels in the checkpoint), so one row in `mlflow ui` holds the whole story.
Everything goes through an explicit MlflowClient, never the fluent API's process-wide active run
and tracking URI, so trials of a tuner may train in threads side by side. See docs/TRACKING.md.
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import tempfile
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import mlflow
import torch
from mlflow.entities import Dataset, DatasetInput, InputTag, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from src.config.schema import Config
from src.tracking import wal
from src.tracking.figures import save_loss_figure
from src.tracking.store import checkpoint_run, connect, experiment_id, is_missing, store_call
from src.tracking.wal import Outbox
from src.training.evaluate import bits_per_char
from src.training.report import Reporter

# How long a checkpoint waits for a store that answers slowly before the write-ahead file takes
# what it has not confirmed (a store that does not answer at all is not waited for).
WAIT_S = 30.0


def _say(line: str) -> None:
    """A line for the user, above any progress bar (from the sender thread too)."""
    tqdm.write(line, file=sys.stderr)


@dataclass(frozen=True)
class DatasetInfo:
    """What a run trained or validated on, for the runs table's Dataset column."""

    name: str  # e.g. "anna-train"
    digest: str  # DVC's hash of the file (md5), so MLflow and dvc.lock name the same data
    source: str  # the corpus: a local path or a URL
    context: str  # "training" | "validation"
    chars: int

    def as_input(self) -> DatasetInput:
        remote = urllib.parse.urlparse(self.source).scheme in ("http", "https")
        source = {"url": self.source} if remote else {"uri": Path(self.source).resolve().as_uri()}
        dataset = Dataset(
            self.name,
            self.digest,
            "http" if remote else "local",
            json.dumps(source),
            profile=json.dumps({"num_chars": self.chars}),
        )
        return DatasetInput(dataset, [InputTag("mlflow.data.context", self.context)])


class MlflowReporter(Reporter):
    """Sends to one MLflow run through a src.tracking.wal.Outbox. Metrics wait in memory until
    flush(), which hands them as one batch to the outbox's sender thread: the loop neither makes a
    store round trip per value nor waits for the one per evaluation (a SQLite commit per call would
    cost more than a small model's step: docs/BENCHMARKS.md, "MLflow logging overhead"). wait()
    returns once the store holds everything, or, while it does not answer, the write-ahead file.
    A request the store refused is raised at the next flush() or wait()."""

    def __init__(
        self,
        run_id: str,
        outbox: Outbox,
        logged_params: Optional[Mapping[str, str]] = None,
    ):
        self.run_id = run_id
        self.outbox = outbox
        # MLflow refuses to change a param; a resumed run keeps the values it started with.
        self._logged_params = set(logged_params or ())
        self._pending: list[list] = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        new = {k: param_value(v) for k, v in params.items() if k not in self._logged_params}
        self._logged_params.update(new)
        if new:
            self.outbox.put({"run": self.run_id, "params": new})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._pending.extend([k, float(v), now, int(step)] for k, v in metrics.items())

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None, kept: bool = False) -> None:
        record = {"run": self.run_id, "artifact": str(Path(path).resolve()), "dir": artifact_path}
        self.outbox.put({**record, "kept": True} if kept else record)

    def log_text(self, text: str, artifact_file: str) -> None:
        # A file of its own per call, kept until sent (beside the write-ahead file, or in a
        # folder of its own), since the sender uploads it later; the store replaces a file of
        # the same name, so a step logged again by a resumed run is still one file.
        folder, _, name = artifact_file.rpartition("/")
        log = self.outbox.log
        unique = uuid.uuid4().hex
        path = log.keep(f"{self.run_id}/{unique}/{name}") if log is not None else Path(tempfile.mkdtemp()) / name
        path.write_text(text, encoding="utf-8")
        self.log_artifact(path, folder or None, kept=True)

    def on_eval(self, step: int, val_loss: float) -> None:
        self.log_metrics({"val_loss": val_loss, "val_bpc": bits_per_char(val_loss)}, step)
        self.flush()

    def flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            self.outbox.put({"run": self.run_id, "metrics": batch})
        self.outbox.check()

    def wait(self) -> None:
        """Flush, then block until the store holds everything logged so far, or the write-ahead
        file does (the store away, or slower than WAIT_S)."""
        self.flush()
        self.outbox.save(WAIT_S)

    def end(self, status: RunStatus, tags: Optional[Mapping[str, str]] = None) -> None:
        if tags:
            self.outbox.put({"run": self.run_id, "tags": dict(tags)})
        self.outbox.put({"run": self.run_id, "end": RunStatus.to_string(status)})

    def close(self) -> int:
        """Stop the sender; -> the records the store has not confirmed (kept in the file)."""
        return self.outbox.close()

    def finish_training(self, result, best, last, vocab, history=None, params_file=None) -> None:
        """Final metrics and the files of the run. The MLflow model and its registration are the
        register stage's (src.serving.registry), after evaluate."""
        final = {_FINAL_RENAMES.get(k, k): v for k, v in result.metrics().items() if isinstance(v, (int, float))}
        self.log_metrics(final, result.steps)
        self.flush()
        self.log_artifact(best, "checkpoints")
        self.log_artifact(last, "checkpoints")
        self.log_artifact(vocab)
        if params_file is not None:
            self.log_artifact(params_file)
        if history is not None:
            self.log_artifact(history, "history")
        # Kept until sent: beside the write-ahead file, or in a folder of its own.
        log = self.outbox.log
        name = "loss_curve.png"
        figure = log.keep(f"{self.run_id}/{name}") if log is not None else Path(tempfile.mkdtemp()) / name
        save_loss_figure(result.train_history, result.val_history, figure)
        self.log_artifact(figure, kept=True)


# The final summary's chars_per_sec is the run's mean; the series of that name is per window.
_FINAL_RENAMES = {"chars_per_sec": "mean_chars_per_sec"}


@contextlib.contextmanager
def start_training_run(
    cfg: Config,
    tracking_uri: Optional[str] = None,
    context: Optional[Mapping[str, Any]] = None,
    resume_run_id: Optional[str] = None,
    parent_run_id: Optional[str] = None,
    run_name: Optional[str] = None,
    stops: tuple[type[BaseException], ...] = (),
    datasets: Sequence[DatasetInfo] = (),
    pending: Optional[Path] = None,
    say: Callable[[str], None] = _say,
) -> Iterator[Reporter]:
    """One MLflow run around a training; yields the reporter to hand to src.training.loop.train.

    `context` holds facts from outside the library (git commit, DVC experiment name, data hash):
    each is logged as a param; `git_commit` and `dvc_exp_name` also fill MLflow's own commit tag
    and the run name. None values are left out. `resume_run_id` (the run id in the checkpoint a
    training resumes from) continues that run when this store has it, so an interrupted and
    resumed training stays one run; params it already has keep their first values.

    The store is checked before anything else, so a wrong URI fails in seconds, not after
    training. An exception ends the run FAILED (KILLED for Ctrl-C) with the reason in the tag
    `failure_reason`; otherwise it ends FINISHED. Exceptions in `stops` (a tuner's pruning) are
    deliberate early ends: the run ends KILLED with the reason in `stop_reason`.

    `parent_run_id` makes the run a child (a tuning trial under its study's run), passed
    explicitly because MLflow's active run is per thread and trials may run in threads.
    `datasets` become the new run's dataset inputs.

    `pending` (a folder beside the checkpoints) keeps what the store has not confirmed while it
    does not answer: training goes on, `say` tells the user in one line when the store goes and
    when it comes back, and what is kept there from an earlier stage is sent first (src/tracking/wal.py).
    """
    if not cfg.tracking.enabled:
        yield Reporter()
        return
    uri = tracking_uri or mlflow.get_tracking_uri()
    client = connect(uri)
    context = {k: v for k, v in (context or {}).items() if v is not None}
    exp_id = experiment_id(client, uri, cfg.tracking.experiment)
    if pending is not None:
        store_call(uri, lambda: wal.replay(pending, say))
    run = store_call(uri, lambda: reopen(client, resume_run_id, exp_id)) if resume_run_id else None
    if run is None:
        tags = {"mlflow.source.name": "src.tune" if parent_run_id else "pipeline.train", "mlflow.source.type": "LOCAL"}
        if "git_commit" in context:
            tags["mlflow.source.git.commit"] = str(context["git_commit"])
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        name = run_name or context.get("dvc_exp_name")
        run = store_call(uri, lambda: client.create_run(exp_id, tags=tags, run_name=name))
        if datasets:
            store_call(uri, lambda: client.log_inputs(run.info.run_id, [d.as_input() for d in datasets]))
    log = wal.WriteAheadLog(pending) if pending is not None else None
    outbox = wal.Outbox(client, uri, log, say)
    reporter = MlflowReporter(run.info.run_id, outbox, logged_params=run.data.params)
    monitor = system_metrics(
        run.info.run_id, uri, resumed=run.info.run_id == resume_run_id, on=cfg.tracking.system_metrics
    )
    try:
        reporter.log_params({**cfg.flat(), **_versions(), **context})
        yield reporter
        reporter.wait()
        monitor.finish()  # its last points before the run ends
        reporter.end(RunStatus.FINISHED)
    except BaseException as exc:
        monitor.finish()
        _end_failed(reporter, exc, stopped=isinstance(exc, stops))
        raise
    finally:
        left = reporter.close()
        if left and log is None:
            say(f"tracking: store {uri} is still not answering: {left} records of run {reporter.run_id} are lost")
        elif left:
            say(
                f"tracking: store {uri} is still not answering: run {reporter.run_id} is completed from "
                f"{wal.shown(log.file)} by the next stage that reaches it, or by `{wal.SYNC_COMMAND}` "
                "once it is back"
            )


class _Off:
    def finish(self) -> None:
        pass


def system_metrics(run_id: str, uri: str, resumed: bool, on: bool):
    """MLflow's own system metrics monitor on the run (tracking.system_metrics), started; its
    finish() stops it. A thread of MLflow's that samples CPU, memory, disk and network (GPU
    where nvidia-ml-py finds one) every 10 s (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL) and logs
    them as system/... metrics straight to the store, not through the write-ahead file: while the
    store is away they are not kept. A resumed run continues their steps."""
    if not on:
        return _Off()
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, tracking_uri=uri)
    monitor.start()
    return monitor


def reopen(client: MlflowClient, run_id: str, experiment_id: str):
    """The run `run_id`, RUNNING again; None when it is not a live run of this experiment here."""
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if is_missing(exc):
            return None
        raise
    if run.info.experiment_id != experiment_id or run.info.lifecycle_stage != "active":
        return None
    client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    if "failure_reason" in run.data.tags:
        client.delete_tag(run_id, "failure_reason")
    client.set_tag(run_id, "resumed", "true")
    return run


def _end_failed(reporter: MlflowReporter, exc: BaseException, stopped: bool = False) -> None:
    """Keep what was logged before the failure, and say why the run ended (sent by the sender
    thread, or kept with the rest while the store is away)."""
    status = RunStatus.KILLED if stopped or isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
    reason = f"{type(exc).__name__}: {exc}"
    try:
        reporter.flush()
    except Exception:
        pass  # the store refused a batch: the original exception is what matters
    reporter.end(status, {"stop_reason" if stopped else "failure_reason": reason})


def log_to_run(
    run_id: Optional[str],
    tracking_uri: Optional[str] = None,
    metrics: Optional[Mapping[str, float]] = None,
    artifacts: Optional[list[Path]] = None,
    tags: Optional[Mapping[str, str]] = None,
    step: int = 0,
    pending: Optional[Path] = None,
    say: Callable[[str], None] = _say,
) -> None:
    """Add the evaluate / sample stage's results to the training run that made the checkpoint.

    With `pending` (the training's write-ahead folder), what the training kept there is sent
    first, and a store that does not answer gets these results appended there too, with a line
    that says so, instead of an error. run_id None (trained with tracking off) does nothing."""
    if run_id is None:
        return
    uri = tracking_uri or mlflow.get_tracking_uri()
    now = int(time.time() * 1000)
    records = [
        {"uri": uri, "run": run_id, "metrics": [[k, float(v), now, int(step)] for k, v in (metrics or {}).items()]},
        {"uri": uri, "run": run_id, "tags": dict(tags or {})},
        *({"uri": uri, "run": run_id, "artifact": str(Path(p).resolve()), "dir": None} for p in artifacts or []),
    ]
    records = [r for r in records if r.get("metrics", r.get("tags", True))]
    try:
        if pending is not None:
            wal.replay(pending, say)
        client = connect(uri)
        checkpoint_run(client, uri, run_id)
        for record in records:
            wal.send(client, record)
    except Exception as exc:
        if pending is None or not wal.is_outage(exc):
            raise
        log = wal.WriteAheadLog(pending)
        log.append(records)
        say(
            f"tracking: store {uri} is not answering ({wal.reason(exc)}); these results wait in "
            f"{wal.shown(log.file)} for the next stage that reaches it, or `{wal.SYNC_COMMAND}` "
            "once it is back"
        )


def param_value(value: Any) -> str:
    return "null" if value is None else str(value)


def _versions() -> dict[str, str]:
    return {
        "torch_version": torch.__version__,
        "mlflow_version": mlflow.__version__,
        "python_version": platform.python_version(),
    }
