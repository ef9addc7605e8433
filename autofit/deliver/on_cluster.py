"""The refit, export and test pass as Ray work, for a run on a cluster.

The driver may be a laptop or a head node without the GPUs; the work runs as one Ray task on a
node with the resources a trial had (a GPU where trials had GPUs, else a node's CPUs). Nothing
it reads or writes is on the driver's disk: the data comes through the object store, the
winner's checkpoint and the refit's own checkpoint through the run's storage, and what the run
directory keeps streams back as the work goes (the task is a Ray generator): log lines, each
best_so_far.onnx export, the refit's weights, model.onnx and the test score. The task's
deadline is absolute, so Ray's scheduling and the worker's start-up are paid out of the
refit's time, and the driver stops waiting at the run's deadline.
"""

from __future__ import annotations

import logging
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autofit import events, stopping
from autofit.data.dataset import Dataset
from autofit.deliver import best as best_so_far
from autofit.deliver.evaluate import Score, score_onnx
from autofit.deliver.export import export_onnx
from autofit.deliver.refit_exports import RefitExports
from autofit.environment import ray_node
from autofit.errors import AutofitError, last_line
from autofit.files import write_atomic
from autofit.records import ExportInfo, RefitInfo, TrialRecord
from autofit.storage import REFIT, Storage
from autofit.train.loop import make_model
from autofit.train.refit import refit

WAIT_S = 0.5  # how often the driver looks at the deadline while it waits for a message
RETRIES = 2


@dataclass(frozen=True)
class Job:
    """What the task needs besides the data (which travels as an object reference)."""

    best: TrialRecord
    stop_at: float  # time.time() at which the refit stops: the deadline less the final reserve
    storage: str
    device: str
    threads: int
    seed: int
    budget_s: float
    metadata: dict[str, Any]  # model.onnx's metadata
    keeper_metadata: dict[str, Any]  # best_so_far.onnx's
    best_record: str | None  # best_so_far.json on the driver's disk when the refit starts
    weights: dict[str, Any] | None  # the refit's, when it finished in an earlier life
    submitted_at: float


@dataclass(frozen=True)
class Started:
    node: str
    start_s: float  # from the driver's submitting the task to the task's start


@dataclass(frozen=True)
class Line:
    level: int
    text: str
    extra: dict[str, Any]
    created: float  # when the task logged it: the run's log shows that time, not its arrival


@dataclass(frozen=True)
class BestSoFarFile:
    onnx: bytes
    record: str


@dataclass(frozen=True)
class RefitDone:
    weights: dict[str, Any]
    info: RefitInfo


@dataclass(frozen=True)
class Exported:
    onnx: bytes
    info: ExportInfo


@dataclass(frozen=True)
class Tested:
    score: Score


Message = Started | Line | BestSoFarFile | RefitDone | Exported | Tested


class _Send(logging.Handler):
    """The task's log records, sent to the driver; paths of the task's scratch folder are shown
    as the run directory's, where the driver writes the files."""

    def __init__(self, send: Callable[[Message], None], scratch: str, run_dir: str) -> None:
        super().__init__()
        self.send, self.scratch, self.run_dir = send, scratch, run_dir

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().replace(self.scratch, self.run_dir)
        self.send(Line(record.levelno, text, events.extras(record), record.created))


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_END = object()


def _work(job: Job, dataset: Dataset, run_dir: str) -> Iterator[Message]:
    """On a Ray node, as a generator task: the work runs in a thread (the refit reports from
    callbacks deep in its loop) and each message it sends is yielded as it comes."""
    messages: queue.Queue[Any] = queue.Queue()

    def run() -> None:
        try:
            _steps(job, dataset, messages.put, run_dir)
        except BaseException as err:  # noqa: BLE001 - raised again in the task's own thread
            messages.put(_Failed(err))
        finally:
            messages.put(_END)

    threading.Thread(target=run, name="autofit-deliver", daemon=True).start()
    while (message := messages.get()) is not _END:
        if isinstance(message, _Failed):
            raise message.error
        yield message


def _steps(job: Job, dataset: Dataset, send: Callable[[Message], None], run_dir: str) -> None:
    """Refit (unless done), export and score, each result sent as it comes."""
    send(Started(ray_node(), time.time() - job.submitted_at))
    storage = Storage(job.storage)
    with tempfile.TemporaryDirectory(prefix="autofit-deliver-") as scratch:
        log = logging.getLogger(f"autofit.on_cluster.{Path(scratch).name}")
        log.setLevel(logging.INFO)
        log.propagate = False
        log.addHandler(_Send(send, scratch, run_dir))
        model = make_model(job.best.config, dataset.shape, *dataset.mean_std)
        if job.weights is not None:
            model.load_state_dict(job.weights)
        else:
            model = _refit(job, dataset, send, storage, Path(scratch), log)
        onnx = Path(scratch) / "model.onnx"
        export = export_onnx(model, onnx, dataset.x_test, job.metadata, job.threads)
        send(Exported(onnx.read_bytes(), export))
        send(Tested(score_onnx(onnx, dataset.x_test, dataset.y_test, job.threads,
                               len(dataset.classes))))


def _refit(job: Job, dataset: Dataset, send: Callable[[Message], None], storage: Storage,
           scratch: Path, log: logging.Logger) -> Any:
    """The refit with its checkpoint in the run's storage (continued from there after a kill)
    and its best_so_far.onnx exports sent to the driver."""
    if job.best_record is not None:  # the exports' rules depend on what the driver has
        write_atomic(scratch / best_so_far.RECORD, job.best_record)
    keeper = best_so_far.BestSoFar(scratch, dataset.shape, *dataset.mean_std,
                                   images=dataset.x_val[:best_so_far.PARITY_IMAGES],
                                   metadata=job.keeper_metadata, threads=job.threads)
    exports = RefitExports.make(keeper, job.best.config, job.best.number, dataset.x_val,
                                dataset.y_val, len(dataset.classes),
                                refit_s=max(job.stop_at - time.time(), 0.0),
                                budget_s=job.budget_s, log=log)

    def on_epoch(end: Any) -> None:
        before = exports.count
        exports(end)
        if exports.count > before:
            send(BestSoFarFile((scratch / best_so_far.MODEL).read_bytes(),
                               (scratch / best_so_far.RECORD).read_text()))

    shared = storage.local  # a path every node sees: the checkpoint is written there directly
    checkpoint = shared / REFIT if shared is not None else scratch / REFIT
    checkpoint.parent.mkdir(parents=True, exist_ok=True)  # no search, no Tune: no folder yet
    upload = None
    if shared is None:  # a URI: kept on this node, copied up after each save
        storage.get(REFIT, checkpoint)

        def upload() -> None:
            storage.put(checkpoint, REFIT)

    model, info = refit(dataset, job.best, stop_at=job.stop_at, device=job.device,
                        threads=job.threads, seed=job.seed, log=log, checkpoint=checkpoint,
                        on_epoch=on_epoch, exports_s=exports.allowance_s, on_save=upload)
    info = info.model_copy(update={"exports": exports.count,
                                   "exports_s": round(exports.spent_s, 3)})
    send(RefitDone({k: v.cpu() for k, v in model.state_dict().items()}, info))
    return model


def deliver(job: Job, dataset: Dataset, run_dir: Path, *, cpus: int, gpus: float,
            deadline: float, log: logging.Logger) -> Iterator[Message]:
    """Run the work on a node with `cpus` and `gpus`; yield what it sends (the driver writes
    best_so_far.onnx itself and logs the task's lines) until it ends. A task that fails, or is
    still running at the run's `deadline`, is an error (best_so_far.onnx stays)."""
    import ray

    # a node that dies under it (Ray may still list a dead node as alive for seconds) gets
    # the task again on another: the refit continues from its checkpoint in the storage
    task = ray.remote(_work).options(num_cpus=cpus, num_gpus=gpus, max_retries=RETRIES)
    stream = task.remote(job, ray.put(dataset), str(run_dir))
    try:
        while True:
            stopping.check()  # the driver stops waiting; the task is cancelled below
            if not ray.wait([stream], timeout=WAIT_S)[0]:
                if time.time() > deadline:
                    raise AutofitError("the refit and export on the cluster were still running "
                                       "at the run's deadline; cancelled")
                continue
            try:
                message = ray.get(next(stream))
            except StopIteration:
                return
            except ray.exceptions.RayError as err:
                raise AutofitError(f"the refit and export on the cluster failed: "
                                   f"{last_line(str(err))}") from None
            if isinstance(message, Line):
                record = log.makeRecord(log.name, message.level, __file__, 0, "%s",
                                        (message.text,), None, extra=message.extra)
                record.created = message.created
                log.handle(record)
            elif isinstance(message, BestSoFarFile):
                write_atomic(run_dir / best_so_far.MODEL, message.onnx)
                write_atomic(run_dir / best_so_far.RECORD, message.record)
            else:
                yield message
    finally:
        with suppress(Exception):  # a finished task has nothing to cancel
            ray.cancel(stream, force=True)
