"""The base of every run record: how a record is written, read and versioned on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from autofit.files import write_atomic

SCHEMA_VERSION = 2  # 1: the untyped dicts written before these models (read as they were)
RecordT = TypeVar("RecordT", bound="Record")


class Record(BaseModel):
    """A record on disk: unknown keys are ignored (a newer autofit's files still read) and
    non-finite floats are written as JSON's NaN/Infinity constants, as Python's json does."""

    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="constants",
                              populate_by_name=True)

    def write(self, path: Path) -> None:
        """Atomically: a reader never sees half a record."""
        write_atomic(path, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def parse(cls: type[RecordT], raw: bytes | str) -> RecordT:
        """The record in a JSON document; ValueError (ValidationError is one) when it is not."""
        return cls.model_validate_json(raw)

    @classmethod
    def read(cls: type[RecordT], path: Path) -> RecordT | None:
        """The record at `path`, or None where there is none or it does not validate."""
        try:
            return cls.parse(path.read_bytes())
        except (OSError, ValueError):
            return None


class Versioned(Record):
    """A record file of its own, stamped with the schema it was written in."""

    schema_version: int = Field(default=SCHEMA_VERSION,
                                validation_alias=AliasChoices("schema_version", "version"))

    def write(self, path: Path) -> None:
        """In the current schema, whichever version it was read in."""
        Record.write(self.model_copy(update={"schema_version": SCHEMA_VERSION}), path)

    @classmethod
    def parse(cls: type[RecordT], raw: bytes | str) -> RecordT:
        """As Record.parse; a file with no version was written before the schema existed, and
        says version 1."""
        data = json.loads(raw)
        if isinstance(data, dict) and "schema_version" not in data and "version" not in data:
            data["schema_version"] = 1
        return cls.model_validate(data)
