"""Budget and search-space presets: YAML files found by name, or given by path.

A name is looked up in the user's own presets first, `$AUTOFIT_HOME/budgets` and
`$AUTOFIT_HOME/search_spaces` (default `~/.config/autofit`), then in the ones that ship with
autofit. Those are the repository's top-level `budgets/` and `search_spaces/`, which a wheel
carries inside the package (`autofit/_presets/`, read with importlib.resources): one source,
whichever way autofit was installed.
"""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

from autofit.errors import UsageError

KINDS = ("budgets", "search_spaces")
HOME_ENV = "AUTOFIT_HOME"


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    origin: str  # "yours" (from AUTOFIT_HOME) or "shipped"


def home() -> Path:
    """The folder of the user's own presets."""
    configured = os.environ.get(HOME_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".config" / "autofit"


def shipped_dir(kind: str) -> Path:
    """The presets that ship with autofit: inside the installed package, or in a source
    checkout (an editable install) the repository folder the package's copy is built from."""
    packaged = importlib.resources.files("autofit") / "_presets" / kind
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / kind


def _folders(kind: str) -> list[tuple[Path, str]]:
    if kind not in KINDS:
        raise ValueError(f"unknown preset kind {kind!r}")
    return [(home() / kind, "yours"), (shipped_dir(kind), "shipped")]


def listed(kind: str) -> list[Preset]:
    """Every preset of `kind` by name; a user's preset hides a shipped one of the same name."""
    found: dict[str, Preset] = {}
    for folder, origin in _folders(kind):
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            found.setdefault(path.stem, Preset(path.stem, path, origin))
    return [found[name] for name in sorted(found)]


def summary_line(path: Path) -> str:
    """A preset's first comment line: what it says it is for."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def preset(kind: str, name_or_path: str | Path) -> Path:
    """A preset by name (`default`), or a YAML file given by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        if not candidate.is_file():
            raise UsageError(f"{kind} file {candidate} does not exist")
        return candidate
    for found in listed(kind):
        if found.name == str(name_or_path):
            return found.path
    where = " or ".join(str(folder) for folder, _ in _folders(kind))
    known = ", ".join(p.name for p in listed(kind)) or "none"
    raise UsageError(f"no {kind} preset named {name_or_path!r} in {where} (known: {known})")
