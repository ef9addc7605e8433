"""Ray for the search: a local Ray or an existing cluster, and what each trial gets there."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autofit.environment import scoped_environment
from autofit.errors import AutofitError, UsageError, last_line
from autofit.search import packing
from autofit.search.packing import Probe, gpu_share, trials_per_gpu
from autofit.storage import Storage

PROBE_TIMEOUT_S = 120.0  # the GPU memory probe: Ray worker and CUDA start-up, a few steps
STORAGE_CHECK_S = 60.0  # every node reads a token from --storage: a worker process start each


def check_address(address: str | None) -> None:
    """Ray Client (`ray://`) runs Ray Tune's driver on the head node, where this run's
    directory and the callbacks that write it are not: refused, with the two ways that work."""
    if address and address.startswith("ray://"):
        raise UsageError(f"--ray-address {address}: Ray Client addresses are not supported (Ray "
                         f"Tune would run on the head node, away from the run directory); start "
                         f"autofit on the cluster with `ray job submit -- autofit run ...`, or "
                         f"give the head's address HOST:6379 from a machine on its network")


@dataclass(frozen=True)
class Workers:
    """Where trials run and what each gets: a whole node's CPUs (one trial per node), or on
    GPUs a share of one, as many trials per GPU as the memory probe says fit (autofit/
    packing.py), with that GPU's CPUs split between them. `packing` records the probe."""

    where: str
    trial_cpus: int
    trial_gpus: float
    concurrency: int
    packing: dict[str, Any] | None = None  # GPU runs: the probe and trials per GPU


def plan_workers(nodes: list[dict[str, float]], device: str,
                 measured: tuple[int, int] | None = None, why: str | None = None) -> Workers:
    """Trial resources for the live Ray nodes' resources. On CUDA, `measured` is the probe's
    (bytes one trial holds, bytes a GPU has); without it (`why` says why), one trial per GPU
    with a node's CPUs, as before packing existed."""
    cpus = int(max(node.get("CPU", 1) for node in nodes))
    if device != "cuda":
        return Workers("", cpus, 0, sum(1 for n in nodes if n.get("CPU", 0) >= cpus))
    gpus = max(1, int(sum(n.get("GPU", 0) for n in nodes)))
    if measured is None:
        return Workers("", cpus, 1, gpus, packing={
            "trials_per_gpu": 1, "peak_bytes": None, "gpu_bytes": None,
            "note": why or "no memory probe"})
    peak, total = measured
    per_gpu = trials_per_gpu(peak, total)
    gpu_cpus = min((int(n.get("CPU", 1)) // int(n["GPU"]) for n in nodes if n.get("GPU", 0) >= 1),
                   default=cpus)
    trial_cpus = cpus if per_gpu == 1 else max(1, gpu_cpus // per_gpu)
    return Workers("", trial_cpus, 1 if per_gpu == 1 else gpu_share(per_gpu), per_gpu * gpus,
                   packing={"trials_per_gpu": per_gpu, "peak_bytes": peak, "gpu_bytes": total,
                            "note": why})


def describe_workers(workers: Workers, where: str, nodes: int) -> str:
    """The line the plan shows (and the summary keeps) about where trials run."""
    text = (f"{where}: {nodes} node(s), {workers.concurrency} trial(s) at a time, "
            f"{workers.trial_cpus} CPUs each")
    packing = workers.packing
    if packing is None:
        return text
    if packing["peak_bytes"] is None:
        return f"{text}, 1 per GPU ({packing['note']})"
    return (f"{text}, {packing['trials_per_gpu']} per GPU (memory probe: "
            f"{packing['peak_bytes'] / 2**30:.2f} GiB per trial of "
            f"{packing['gpu_bytes'] / 2**30:.0f} GiB)")


class _Fold(logging.Handler):
    """Ray's own log records, as lines of the run's log (and so of its console view)."""

    def __init__(self, log: logging.Logger) -> None:
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.log(max(record.levelno, logging.WARNING), "ray: %s", record.getMessage())


@contextmanager
def _ray_logs_into(log: logging.Logger) -> Iterator[None]:
    ray_log = logging.getLogger("ray")
    own = list(ray_log.handlers)
    ray_log.handlers = [_Fold(log)]
    try:
        yield
    finally:
        ray_log.handlers = own


RAY_ENVIRONMENT = {
    # The leaderboard and summary are autofit's record of the search: no per-trial loggers.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    # Ctrl-C must stop the whole run: Tune's own handler would end only the search.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # Every trial report carries a checkpoint and Tune snapshots its state after each (that is
    # what makes a resume lose nothing); its warning about frequent snapshots is moot here.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


@contextmanager
def ray_session(address: str | None, threads: int, device: str, log: logging.Logger,
                probe: Probe | None = None, *, storage: Storage | None = None,
                shared: bool = False) -> Iterator[Workers]:
    """Connect to `address` (an existing cluster) or start a local Ray; yield its workers.

    Only a Ray this call started is shut down. Tune's per-trial loggers are off (the
    leaderboard and summary are autofit's record of the search), and what Ray logs goes into
    the run's log instead of beside it. On CUDA, `probe` (the space, cap and data) sizes how
    many trials share a GPU; without it each trial gets a whole GPU. On more than one node,
    `storage` must be `shared` (given as --storage) and, when it is a path, seen by every node.
    """
    with _ray_logs_into(log), scoped_environment(RAY_ENVIRONMENT):
        yield from _ray_session(address, threads, device, probe, storage, shared)


def _sees(path: str, token: str) -> bool:
    """On one node: whether the storage path holds the token the driver wrote."""
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def check_storage(nodes: list[dict[str, Any]], storage: Storage, shared: bool) -> None:
    """On more than one node, Tune's state and the checkpoints must be where every node reaches
    them: --storage, and when that is a path, one each node sees (a token written here is read
    back on every node, so a path that is local to this machine is caught before any trial)."""
    if len(nodes) < 2:
        return
    if not shared:
        raise UsageError(f"the Ray cluster has {len(nodes)} nodes, and without --storage the "
                         f"checkpoints would go to {storage.root} on this machine, which the "
                         f"other nodes cannot reach; give --storage, a path every node mounts "
                         f"or a URI such as s3://bucket/autofit")
    local = storage.local
    if local is None:
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token, marker = secrets.token_hex(8), local / ".autofit-nodes"
    local.mkdir(parents=True, exist_ok=True)
    marker.write_text(token)
    sees = ray.remote(num_cpus=0, max_retries=0)(_sees)
    refs = {node["NodeManagerAddress"] + "/" + node["NodeID"][:8]: sees.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
        str(marker), token) for node in nodes}
    try:
        blind = [name for name, ref in refs.items() if not ray.get(ref, timeout=STORAGE_CHECK_S)]
    except Exception as err:  # noqa: BLE001 - a node that cannot answer cannot be trusted
        raise UsageError(f"--storage {storage.root}: could not check that every Ray node sees "
                         f"it ({last_line(str(err))})") from None
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise UsageError(f"--storage {storage.root}: Ray node(s) {', '.join(blind)} do not see "
                         f"this path; give a path every node mounts or a URI such as "
                         f"s3://bucket/autofit")


def _measure(probe: Probe) -> tuple[tuple[int, int] | None, str | None]:
    """The memory probe, run in a Ray task holding one GPU (the device trials will use, in a
    process of its own whose CUDA context ends with it): its result, or why there is none."""
    import ray

    task = ray.remote(num_gpus=1, num_cpus=1, max_calls=1)(packing.measure)
    ref = task.remote(probe)
    try:
        measured = ray.get(ref, timeout=PROBE_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - any failure: one trial per GPU, as before
        ray.cancel(ref, force=True)
        return None, f"memory probe failed: {last_line(str(err))}"
    return measured, None if measured is not None else "memory probe found no CUDA device"


def _ray_session(address: str | None, threads: int, device: str, probe: Probe | None,
                 storage: Storage | None, shared: bool) -> Iterator[Workers]:
    import ray

    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.ERROR}
        if address:
            kwargs["address"] = address
        else:  # a Ray of its own, even when another run's Ray is up on this machine
            kwargs.update(address="local", num_cpus=threads)
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise AutofitError(f"cannot start or reach Ray at {address or 'local'}: "
                               f"{last_line(str(err))}") from None
    try:
        alive = [node for node in ray.nodes() if node.get("Alive")]
        if storage is not None:
            check_storage(alive, storage, shared)
        nodes = [node["Resources"] for node in alive]
        measured, why = None, None if probe is not None else "no memory probe asked for"
        if device == "cuda" and probe is not None:
            if any(n.get("GPU", 0) >= 1 for n in nodes):
                measured, why = _measure(probe)
            else:
                why = "no Ray node has a whole GPU to probe"
        workers = plan_workers(nodes, device, measured, why)
        where = f"ray cluster at {address}" if address else "local ray"
        yield replace(workers, where=describe_workers(workers, where, len(nodes)))
    finally:
        if started:
            ray.shutdown()
