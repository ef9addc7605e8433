"""A real two-node Ray cluster on one machine, for tests that need a node to die.

``LoopbackCluster`` starts a head node and a second ("worker") node with ``ray start``, each
with one CPU, its own temp dir and a custom resource (``node_head`` / ``node_worker``) so work
can be pinned to either node.  It never runs ``ray stop``: other Ray instances on the machine
must survive, so every process is found and killed individually (see ``pids``).

Facts about Ray 2.60 this module relies on (checked by hand, see the notes at each method):

* ``--node-ip-address=127.0.0.1`` is *rewritten* by ``ray start`` to the host's routable
  address (``services.resolve_ip_for_localhost``), so both nodes report the same IP, e.g.
  ``192.0.2.2``, and every node has the same ``node:<ip>`` resource.  The GCS listens on all
  interfaces, so ``address`` (``127.0.0.1:PORT``) still works for ``ray.init``.
* ``--temp-dir`` is honoured per node; the worker node needs no extra flag: its session dir,
  sockets, logs and object-spilling fallback dir all live under ``worker_dir``.
* A driver started with ``ray.init(address=...)`` on this machine attaches to the *head* node
  (``services.get_node_to_connect_for_driver`` prefers the head when several nodes share an
  IP), so killing the worker raylet does not take the driver down.
* ``--include-dashboard=false`` still starts a "minimal" ``dashboard.py`` process on the head.
* Token authentication is switched on when ``RAY_AUTH_MODE`` is unset and a token exists, so
  the ``ray`` commands get ``RAY_AUTH_MODE=disabled``; a driver in the test process needs the
  same variable (``monkeypatch.setenv("RAY_AUTH_MODE", "disabled")``), see ``env``.
* Tune writes a trial's ``error.txt`` under the *driver's* session dir (here the head's temp
  dir, ``.../artifacts/<date>/<name>/driver_artifacts/<trial>/error.txt``), not under
  ``storage_path``; read it before ``stop`` if the base dir is a short /tmp one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

NODES = ("head", "worker")

#: GCS health-check settings for ``--system-config``: a SIGKILLed raylet refuses connections at
#: once, so death is declared after ``failure_threshold`` checks ``period_ms`` apart (about 2 s
#: here instead of about 15 s with Ray's defaults 3000 ms x 5).  A *live* raylet is only declared
#: dead after four checks in a row that each time out after 2 s.
FAST_NODE_DEATH: dict[str, int] = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 2000,
    "health_check_failure_threshold": 4,
}

# Unix socket paths (``<dir>/session_<date>_<pid>/sockets/plasma_store``) must fit in 107 bytes.
_MAX_BASE_LEN = 40


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # gone, a kernel thread, or not ours
        return b""


def _procs() -> Iterator[int]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def _alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (a zombie holds no resources)."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] != b"Z"


def _ppid(pid: int) -> int:
    stat = _read(f"/proc/{pid}/stat")
    return int(stat[stat.rfind(b")") + 2 :].split()[1]) if stat else 0


def _mentions(pid: int, path: str) -> bool:
    """Whether one of the command-line arguments of ``pid`` is ``path`` or lies under it."""
    for arg in _read(f"/proc/{pid}/cmdline").decode(errors="replace").split("\0"):
        _, _, value = arg.rpartition("=")
        if value == path or value.startswith(path + "/"):
            return True
    return False


class LoopbackCluster:
    """A head node and a worker node started with ``ray start`` on this machine.

    ``base_dir`` is where the nodes' temp dirs go (``<base>/head`` and ``<base>/worker``).  Unix
    socket paths are limited to about 107 bytes and Ray puts them at
    ``<temp dir>/session_<timestamp>_<pid>/sockets/plasma_store``, so if ``base_dir`` is longer
    than 40 characters (pytest's ``tmp_path`` usually is) a short directory made with
    ``tempfile.mkdtemp(prefix="rn")`` under /tmp is used instead; it is removed by ``stop``.
    ``base_dir`` itself always receives the ``ray start`` logs (``head.start.log``, ...).

    ``system_config`` goes to the head's ``--system-config`` (hidden flag of ``ray start``);
    the default ``FAST_NODE_DEATH`` makes the GCS declare a killed node dead in about 2 s.
    Pass ``None`` to keep Ray's defaults.

    Use as a context manager::

        with LoopbackCluster(tmp_path) as cluster:
            ray.init(address=cluster.address)
            ...
            cluster.kill_raylet("worker")
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        system_config: Mapping[str, Any] | None = FAST_NODE_DEATH,
        object_store_memory: int | None = 200 * 1024 * 1024,
        timeout: float = 60.0,
    ) -> None:
        self.log_dir = Path(base_dir).resolve()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if len(str(self.log_dir)) <= _MAX_BASE_LEN:
            self.base_dir = self.log_dir
            self._own_base = False
        else:
            self.base_dir = Path(tempfile.mkdtemp(prefix="rn"))
            self._own_base = True
        self.head_dir = str(self.base_dir / "head")
        self.worker_dir = str(self.base_dir / "worker")
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.system_config = dict(system_config) if system_config is not None else None
        self.object_store_memory = object_store_memory
        self.timeout = timeout
        self.ray = str(Path(sys.executable).with_name("ray"))
        self._node_ids: dict[str, str] = {}
        self._raylets: dict[str, int] = {}
        self.start_seconds = 0.0

    # -- environment ------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Environment for the ``ray`` commands and for driver subprocesses."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
        env["RAY_AUTH_MODE"] = "disabled"
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        return env

    def dir_of(self, which: str) -> str:
        if which not in NODES:
            raise ValueError(f"node must be one of {NODES}, not {which!r}")
        return self.head_dir if which == "head" else self.worker_dir

    # -- start ------------------------------------------------------------------------------

    def _ray_start(self, which: str, args: list[str]) -> None:
        log = self.log_dir / f"{which}.start.log"
        with open(log, "ab") as out:
            proc = subprocess.run(
                [self.ray, "start", *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=self.timeout,
                check=False,
            )
        if proc.returncode != 0:
            raise RuntimeError(
                f"ray start ({which}) exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            )

    def start(self) -> LoopbackCluster:
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _start(self) -> None:
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1"]
        if self.object_store_memory is not None:
            common.append(f"--object-store-memory={self.object_store_memory}")
        head = [
            "--head",
            f"--port={self.port}",
            *common,
            "--include-dashboard=false",
            f"--dashboard-port={_free_port()}",
            "--disable-usage-stats",
            f"--temp-dir={self.head_dir}",
            '--resources={"node_head": 1}',
        ]
        if self.system_config is not None:
            head.append(f"--system-config={json.dumps(self.system_config)}")
        self._ray_start("head", head)
        self._ray_start(
            "worker",
            [
                f"--address={self.address}",
                *common,
                f"--temp-dir={self.worker_dir}",
                '--resources={"node_worker": 1}',
            ],
        )
        deadline = time.monotonic() + self.timeout
        while True:
            alive = self.alive_nodes()
            if set(alive.values()) >= set(NODES):
                self._node_ids = {which: nid for nid, which in alive.items()}
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes did not register with the GCS: {alive}")
            time.sleep(0.2)
        for which in NODES:
            pid = self.raylet_pid(which)
            if pid is None:
                raise RuntimeError(f"no raylet process for the {which} node")
            self._raylets[which] = pid

    # -- queries ----------------------------------------------------------------------------

    def _gcs_nodes(self) -> list[Any]:
        from ray._raylet import GcsClient  # private, but needs neither ray.init nor dashboard

        # RAY_AUTH_MODE is read from the environment of this process.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        client = GcsClient(address=self.address)
        return list(client.get_all_node_info(timeout=10).values())

    def alive_nodes(self) -> dict[str, str]:
        """GCS view: node id hex -> "head"/"worker" for the nodes the GCS holds ALIVE."""
        out: dict[str, str] = {}
        for info in self._gcs_nodes():
            if info.state != 0:  # GcsNodeInfo.ALIVE == 0, DEAD == 1
                continue
            for which in NODES:
                if info.resources_total.get(f"node_{which}", 0) > 0:
                    out[info.node_id.hex()] = which
        return out

    def node_alive(self, which: str) -> bool:
        """Whether the GCS still holds ``which`` ALIVE (fast: one GCS RPC, about 10 ms)."""
        return self.node_ids()[which] in self.alive_nodes()

    def node_ids(self) -> dict[str, str]:
        """``{"head": <node id hex>, "worker": <node id hex>}``, as ``get_node_id()`` reports.

        Read once at start from the GCS (matched by the ``node_head``/``node_worker``
        resources; the same id is in the raylet's ``--node_id=`` argument and in file names
        such as ``<temp dir>/session_latest/runtime_env_agent_port_<node id>``) and cached,
        so it still answers after a node has been killed.
        """
        if not self._node_ids:
            raise RuntimeError("cluster not started")
        return dict(self._node_ids)

    def raylet_pid(self, which: str) -> int | None:
        """Pid of the node's raylet (binary ``.../raylet`` with the node's temp dir in argv)."""
        if which in self._raylets:
            pid = self._raylets[which]
            return pid if _alive(pid) and _mentions(pid, self.dir_of(which)) else None
        path = self.dir_of(which)
        for pid in _procs():
            argv0 = _read(f"/proc/{pid}/cmdline").split(b"\0", 1)[0]
            if argv0.endswith(b"/raylet") and _mentions(pid, path) and _alive(pid):
                return pid
        return None

    def pids(self, which: str) -> list[int]:
        """Live (non-zombie) processes of node ``which``.

        * gcs_server, raylet, log_monitor, the autoscaler monitor and the minimal dashboard
          carry the node's temp dir in their command line.
        * The raylet's children rename themselves (``ray::DashboardAgent``,
          ``ray::RuntimeEnvAgent``, ``ray::IDLE``, ``ray::<task or actor>``), so their command
          line no longer shows the temp dir; they are found by ``RAY_RAYLET_PID=<raylet pid>``
          in /proc/PID/environ, which survives the raylet's death (their parent then becomes
          pid 1, so a parent-pid walk alone would miss them).
        * Anything whose parent chain leads to one of the above is included too.
        """
        path = self.dir_of(which)
        me = os.getpid()
        raylets = {self._raylets[which]} if which in self._raylets else set()
        found: set[int] = set()
        procs = [p for p in _procs() if p != me]
        for pid in procs:
            if _mentions(pid, path):
                found.add(pid)
                if _read(f"/proc/{pid}/cmdline").split(b"\0", 1)[0].endswith(b"/raylet"):
                    raylets.add(pid)
        markers = {f"RAY_RAYLET_PID={r}".encode() for r in raylets}
        for pid in procs:
            if pid not in found and markers & set(_read(f"/proc/{pid}/environ").split(b"\0")):
                found.add(pid)
        parents = {pid: _ppid(pid) for pid in procs}
        grew = True
        while grew:
            kids = {pid for pid, ppid in parents.items() if ppid in found and pid not in found}
            found |= kids
            grew = bool(kids)
        return sorted(pid for pid in found if _alive(pid))

    # -- faults and teardown ----------------------------------------------------------------

    def kill_raylet(self, which: str = "worker") -> int:
        """SIGKILL the node's raylet only (what a node death looks like). Returns its pid.

        The node's agents and workers notice and exit by themselves within about 2-4 s; its
        log_monitor stays up until ``stop``.  A Tune trial on the node then fails with
        ``ray.exceptions.ActorDiedError`` ("The actor died because its node has died") when the
        GCS declares the node dead first (always so with ``FAST_NODE_DEATH``: about 1.8 s), or
        with ``ActorUnavailableError`` ("RpcError: ... Socket closed") when the actor process
        exits first (seen with Ray's default health checks: about 4 s, node dead after 14 s).
        Both are ``ray.exceptions.RayActorError``.
        """
        pid = self.raylet_pid(which)
        if pid is None:
            raise RuntimeError(f"no live raylet for the {which} node")
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_node_dead(self, which: str = "worker", timeout: float = 60.0) -> float:
        """Block until the GCS marks ``which`` DEAD; returns the seconds waited."""
        t0 = time.monotonic()
        while self.node_alive(which):
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"the GCS still holds the {which} node alive")
            time.sleep(0.1)
        return time.monotonic() - t0

    def leftovers(self) -> list[int]:
        """Live processes with either node's temp dir in their command line."""
        dirs = (self.head_dir, self.worker_dir)
        return [p for p in _procs() if any(_mentions(p, d) for d in dirs) and _alive(p)]

    def stop(self, timeout: float = 30.0) -> None:
        """SIGKILL every process of both nodes (never ``ray stop``) and wait until they are gone.

        Worker node first, so its raylet does not log a storm of GCS reconnects.  Repeats the
        search until nothing is left, since a dying raylet may still fork a worker.
        """
        deadline = time.monotonic() + timeout
        while True:
            pids = [p for which in ("worker", "head") for p in self.pids(which)]
            pids += [p for p in self.leftovers() if p not in pids]
            if not pids:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray processes survived SIGKILL: {pids}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
        self._raylets.clear()
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> LoopbackCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
