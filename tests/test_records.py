"""The typed run records: what a run writes is read back through the same models, and run
directories written before the schema existed (tests/data/v1-*, made by autofit 0.1.0 at
commit 04ecede: a searched digits run and a search-skipped CIFAR-10 run) still read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autofit.journal import Journal
from autofit.records import SCHEMA_VERSION, JournalState, Summary
from autofit.reporting import html_report, run_files, run_table

V1 = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["v1-searched", "v1-prior"])
def test_version_1_run_directories_read_through_the_models(name: str, tmp_path: Path):
    folder = shutil.copytree(V1 / name, tmp_path / name)
    raw = json.loads((folder / "summary.json").read_text())
    summary = Summary.read(folder / "summary.json")
    assert summary is not None and summary.schema_version == 1
    assert summary.status == "finished" and summary.test_accuracy == raw["test_accuracy"]
    assert summary.data_path == raw["data_pipeline"] == "dali-cpu"  # the field's old name
    assert summary.best_config is not None
    assert _within(raw["best_config"], summary.best_config.model_dump())  # later fields: defaults
    assert summary.refit is not None and summary.refit.epochs == raw["refit"]["epochs"]
    assert summary.test is not None and summary.test.confusion == raw["test"]["confusion"]
    journal = JournalState.read(folder / "journal.json")
    assert journal is not None and journal.schema_version == 1 and journal.status == "finished"
    assert journal.search is not None and journal.plan is not None
    assert len(journal.search.records) == raw["trials"]
    assert (journal.search.prior is None) == (raw["best_trial"] is not None)

    run = run_files.read(folder)
    assert run.status == "finished" and run.minutes == raw["budget"]["minutes"]
    assert run.search_skipped == (not raw["plan"]["searched"])
    page = html_report.render(folder).read_text()
    assert f"{raw['test_accuracy']:.4f}" in page
    [row] = run_table.rows(folder)
    assert row["test_acc"] == raw["test_accuracy"] and row["trials"] == raw["trials"]


def test_a_version_1_journal_of_an_interrupted_run_opens_for_resume(tmp_path: Path):
    folder = shutil.copytree(V1 / "v1-searched", tmp_path / "run")
    state = json.loads((folder / "journal.json").read_text())
    state["status"] = "running"
    (folder / "journal.json").write_text(json.dumps(state))
    journal = Journal.open(folder)
    assert journal.args.budget.minutes == state["args"]["budget"]["minutes"]
    assert journal.state.search is not None
    assert journal.state.search.records[0].config.family == \
        state["search"]["records"][0]["config"]["family"]
    journal.set(phase="refit")  # written back in the current schema
    again = json.loads((folder / "journal.json").read_text())
    assert again["schema_version"] == SCHEMA_VERSION and "version" not in again


def test_records_round_trip_with_non_finite_numbers(tmp_path: Path):
    """A diverged trial's loss is NaN: written as JSON's NaN, read back as NaN, not null."""
    summary = Summary.read(V1 / "v1-searched" / "summary.json")
    assert summary is not None and summary.best_metrics is not None
    diverged = summary.model_copy(update={
        "best_metrics": summary.best_metrics.model_copy(update={"loss": float("nan")})})
    diverged.write(tmp_path / "summary.json")
    back = Summary.read(tmp_path / "summary.json")
    assert back is not None and back.best_metrics is not None
    assert back.best_metrics.loss != back.best_metrics.loss  # NaN
    assert back.schema_version == SCHEMA_VERSION  # written in the current schema


def test_an_unreadable_record_reads_as_none(tmp_path: Path):
    (tmp_path / "summary.json").write_text('{"status": "finished"')  # torn by a kill
    assert Summary.read(tmp_path / "summary.json") is None
    assert Summary.read(tmp_path / "absent.json") is None


def _within(old: object, new: object) -> bool:
    """Whether every value an older file holds is read back the same; fields added since it
    was written (with defaults that do what was done before) may be there too."""
    if isinstance(old, dict) and isinstance(new, dict):
        return all(key in new and _within(value, new[key]) for key, value in old.items())
    return old == new
