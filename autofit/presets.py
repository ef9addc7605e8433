"""Where the user-editable YAML presets live: budgets/ and search_spaces/ at the project root."""

from __future__ import annotations

from pathlib import Path

from autofit.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


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
