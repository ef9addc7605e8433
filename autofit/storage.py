"""Where a run keeps what every Ray node must reach: Ray Tune's experiment state, the trials'
checkpoints and the refit's checkpoint.

On one machine that is `RUN_DIR/tune`. On a cluster of more than one node it is `--storage`:
a path every node mounts (NFS, a cluster filesystem) or a pyarrow filesystem URI such as
`s3://bucket/autofit`, because a trial on another node cannot write to the driver's disk, nor
the refit read a checkpoint from a node that is gone. Each run gets a folder of its own there.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autofit.errors import UsageError, one_line

if TYPE_CHECKING:
    import pyarrow.fs

EXPERIMENT = "search"  # Tune's experiment folder under the run's storage
REFIT = "refit.pt"  # the refit's checkpoint, when the refit runs as Ray work


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else ""


def storage_root(given: str) -> str:
    """The user's `--storage`, checked before the run starts: a path (made absolute, created
    and checked writable here) or a URI pyarrow opens; a one-line error names the option."""
    if _scheme(given) in ("", "file"):
        root = Path(given.removeprefix("file://")).expanduser().resolve()
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=".autofit-"):
                pass
        except OSError as err:
            raise UsageError(f"--storage {given}: cannot write there ({one_line(err)})") from None
        return str(root)
    import pyarrow.fs

    try:
        pyarrow.fs.FileSystem.from_uri(given)
    except (pyarrow.ArrowException, ValueError, OSError) as err:
        raise UsageError(f"--storage {given}: not a path nor a filesystem URI pyarrow can open "
                         f"({one_line(err)})") from None
    return given.rstrip("/")


def run_folder(root: str, run_name: str) -> str:
    """The run's own folder under the storage root (a run directory's name is not unique
    across machines)."""
    return f"{root}/{run_name}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Storage:
    """A run's storage root: a local path (`RUN_DIR/tune`, or a shared mount) or a URI."""

    root: str

    @property
    def local(self) -> Path | None:
        """The root as a path of this machine's filesystem; None for a URI."""
        return Path(self.root.removeprefix("file://")) if _scheme(self.root) in ("", "file") \
            else None

    @property
    def experiment(self) -> str:
        return f"{self.root}/{EXPERIMENT}"

    def uri(self, path: str) -> str:
        """A path Ray Tune reports inside this storage (a URI's filesystem drops the scheme)
        as the location the run records."""
        return path if self.local is not None or "://" in path else \
            f"{_scheme(self.root)}://{path}"

    def _filesystem(self, where: str) -> tuple[pyarrow.fs.FileSystem, str]:
        import pyarrow.fs

        return pyarrow.fs.FileSystem.from_uri(where)

    def put(self, local: Path, name: str) -> None:
        """Copy a file of this node to `name` under the root (a replace, atomic on a path)."""
        if self.local is not None:
            target = self.local / name
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(local, tmp)
            tmp.replace(target)
            return
        import pyarrow.fs

        filesystem, path = self._filesystem(f"{self.root}/{name}")
        pyarrow.fs.copy_files(str(local), path, destination_filesystem=filesystem)

    def get(self, name: str, local: Path) -> bool:
        """Copy `name` under the root to a file of this node; False when there is none."""
        if self.local is not None:
            source = self.local / name
            if not source.is_file():
                return False
            shutil.copyfile(source, local)
            return True
        import pyarrow.fs

        filesystem, path = self._filesystem(f"{self.root}/{name}")
        if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
            return False
        pyarrow.fs.copy_files(path, str(local), source_filesystem=filesystem)
        return True

    def delete(self, name: str) -> None:
        if self.local is not None:
            (self.local / name).unlink(missing_ok=True)
            return
        filesystem, path = self._filesystem(f"{self.root}/{name}")
        import pyarrow.fs

        if filesystem.get_file_info(path).type == pyarrow.fs.FileType.File:
            filesystem.delete_file(path)


@contextmanager
def readable(location: str) -> Iterator[str]:
    """A checkpoint directory recorded by the search, as a directory of this node: itself when
    it is a path (the run directory, or a mount every node shares), else a copy of it."""
    if _scheme(location) in ("", "file"):
        yield location.removeprefix("file://")
        return
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
    with tempfile.TemporaryDirectory(prefix="autofit-checkpoint-") as directory:
        pyarrow.fs.copy_files(path, directory, source_filesystem=filesystem)
        yield directory
