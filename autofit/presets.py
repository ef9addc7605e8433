"""Where the user-editable YAML presets live: budgets/ and search_spaces/ at the project root."""

from __future__ import annotations

from pathlib import Path

from autofit.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


def listed(kind: str) -> list[Path]:
    """The presets that ship in ROOT/kind, by name."""
    return sorted((ROOT / kind).glob("*.yaml"))


def summary_line(path: Path) -> str:
    """A preset's first comment line: what it says it is for."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def preset(kind: str, name_or_path: str | Path) -> Path:
    """A preset by name (`default`) from ROOT/kind, or a YAML file given by path."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        if not candidate.is_file():
            raise UsageError(f"{kind} file {candidate} does not exist")
        return candidate
    path = ROOT / kind / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (ROOT / kind).glob("*.yaml"))
        raise UsageError(f"no {kind} preset named {name_or_path!r} in {ROOT / kind} "
                         f"(known: {', '.join(known) or 'none'})")
    return path
