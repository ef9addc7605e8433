"""Bad input: one line on stderr naming the problem, exit code 2, no traceback."""

from pathlib import Path

import pytest
from conftest import write_folder
from typer.testing import CliRunner

from autofit.cli import app


def _invoke(args):
    result = CliRunner().invoke(app, ["run", *args])
    return result.exit_code, result.stderr


def _empty_class(p: Path) -> Path:
    root = write_folder(p / "d", 2, size=8)
    (root / "zebra").mkdir()
    return root


def _with_file(p: Path, name: str, content: bytes) -> Path:
    root = write_folder(p / "d", 2, size=8, suffix=".jpg")
    (root / name).write_bytes(content)
    return root


@pytest.mark.parametrize("make_args,needle", [
    (lambda p: ["--data", str(p / "nope")], "nope does not exist"),
    (lambda p: ["--data", str((p / "e").mkdir() or p / "e")], "is empty"),
    (lambda p: ["--data", str(_empty_class(p))], "class folder .*zebra has no images"),
    (lambda p: ["--data", str(write_folder(p / "one", 2, classes={"a": (1, 2, 3)}))],
     "at least 2 classes"),
    (lambda p: ["--data", str(_with_file(p, "red/0001.jpg", b"GIF89a not a jpeg"))],
     "red/0001.jpg is not a JPEG"),
    (lambda p: ["--data", str(_with_file(p, "blue/0000.jpg", b"\xff\xd8\xff\xe0\0\x10JFIF"))],
     "blue/0000.jpg is a truncated JPEG"),
    (lambda p: ["--data", str(_with_file(p, "green/0001.png", b""))], "green/0001.png is empty"),
    (lambda p: ["--max-params", "2X"], "--max-params"),
    (lambda p: ["--max-params", "0"], "--max-params"),
    (lambda p: ["--max-params", "1e99"], "--max-params"),
    (lambda p: ["--minutes", "abc"], "--minutes"),
    (lambda p: ["--minutes", "0"], "--minutes"),
    (lambda p: ["--minutes", "-1"], "--minutes"),
    (lambda p: ["--minutes", "nan"], "--minutes"),
    (lambda p: ["--minutes", "1e9"], "--minutes"),
    (lambda p: ["--max-params", "1000"], "smallest .* has [0-9,]+ parameters"),
    (lambda p: ["--out", str((p / "f").write_text("x") and p / "f" / "run")], "not writable"),
    (lambda p: ["--space", str(p / "missing.yaml")], "missing.yaml does not exist"),
    (lambda p: ["--budget", "nope"], "no budgets preset named 'nope'"),
    (lambda p: ["--ray-address", "ray://127.0.0.1:10001"], "Ray Client .*ray job submit"),
    (lambda p: ["--storage", "nosuch://bucket/x"], "--storage nosuch://bucket/x: not a path nor"),
    (lambda p: ["--storage", str((p / "f").write_text("x") and p / "f" / "s")],
     "--storage .*/f/s: cannot write there"),
])
def test_bad_input_is_one_clear_line(tmp_path: Path, make_args, needle):
    args = make_args(tmp_path)
    if "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    code, stderr = _invoke(["--minutes", "1", *args] if "--minutes" not in args else args)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autofit: error: "), stderr
    assert "Traceback" not in stderr
    import re

    assert re.search(needle, lines[0]), lines[0]


def test_out_holding_a_run_is_refused(tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"previous work")
    code, stderr = _invoke(["--minutes", "1", "--out", str(out)])
    assert code == 2 and "already holds a run" in stderr
    assert (out / "model.onnx").read_bytes() == b"previous work"


def test_help_lists_the_options():
    result = CliRunner().invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    for option in ("--data", "--minutes", "--max-params", "--out", "--seed"):
        assert option in result.stdout


def test_budgets_lists_the_shipped_presets_and_flags_override_them():
    from autofit.budget import Budget
    from autofit.presets import preset

    result = CliRunner().invoke(app, ["budgets"])
    assert result.exit_code == 0
    rows = {line.split()[0]: line.split()[1:3] for line in result.stdout.splitlines()[1:]}
    assert rows["quick"] == ["1", "500,000"] and rows["standard"] == ["10", "2,000,000"]
    assert rows["edge"] == ["5", "250,000"] and "default" in rows
    chosen = Budget.from_yaml(preset("budgets", "edge"), minutes="2", max_params=None)
    assert (chosen.minutes, chosen.max_params) == (2.0, 250_000)


def test_spaces_lists_each_space_with_its_families():
    result = CliRunner().invoke(app, ["spaces"])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[1].split()[:3] == ["default", "fastnet,", "resnet"]


@pytest.mark.parametrize("args,needle", [
    (["predict", "nowhere.onnx", "x.png"], "cannot read nowhere.onnx as an ONNX model"),
    (["inspect", "nowhere.onnx"], "cannot read nowhere.onnx as an ONNX model"),
])
def test_predict_and_inspect_refuse_what_is_not_a_model(args, needle):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and result.stderr.strip().startswith("autofit: error: ")
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
