"""The plumbing the state stores share (fedkube.state.base): JSON encoding,
update_job's field and phase checks, the schema version check, and the
MongoDB store's new-document defaults derived from the records."""

from __future__ import annotations

import dataclasses

import pytest

from fedkube.errors import StateError
from fedkube.state.base import (
    JOB_FIELDS,
    SCHEMA_VERSION,
    JobRecord,
    RoundRecord,
    check_job_fields,
    check_schema_version,
    encode_json,
    encode_json_fields,
)
from fedkube.vocabulary import Phase


def test_encode_json_is_canonical() -> None:
    assert encode_json({"b": 1, "a": {"d": [1, 2.5], "c": None}}) == (
        '{"a":{"c":null,"d":[1,2.5]},"b":1}'
    )
    assert encode_json_fields({"metrics": {"y": 1, "x": 2}, "n": 3}, frozenset({"metrics"})) == {
        "metrics": '{"x":2,"y":1}',
        "n": 3,
    }


def test_job_fields_are_the_record_fields() -> None:
    assert {f.name for f in dataclasses.fields(JobRecord)} == JOB_FIELDS


def test_check_job_fields_accepts_every_settable_field_and_phase() -> None:
    check_job_fields("j", {k: None for k in JOB_FIELDS if k not in ("name", "phase")})
    for phase in Phase:
        check_job_fields("j", {"phase": phase})
        check_job_fields("j", {"phase": str(phase)})


def test_check_job_fields_refuses_unknown_and_read_only_fields() -> None:
    with pytest.raises(StateError) as err:
        check_job_fields("j", {"name": "k", "colour": "red", "phase": Phase.RUNNING})
    assert str(err.value) == "update_job('j'): unknown or read-only field(s) ['colour', 'name']"


def test_check_job_fields_refuses_an_unknown_phase() -> None:
    with pytest.raises(StateError) as err:
        check_job_fields("j", {"phase": "Exploded"})
    assert str(err.value) == (
        "update_job('j'): unknown phase 'Exploded' (one of "
        "('Pending', 'Running', 'Suspended', 'Succeeded', 'Failed'))"
    )


def test_check_schema_version() -> None:
    check_schema_version("sqlite:////x.db", SCHEMA_VERSION)
    check_schema_version("sqlite:////x.db", SCHEMA_VERSION - 1)
    with pytest.raises(StateError) as err:
        check_schema_version("sqlite:////x.db", SCHEMA_VERSION + 1)
    assert str(err.value) == (
        f"state store sqlite:////x.db has schema version {SCHEMA_VERSION + 1}, newer than "
        f"this fedkube supports ({SCHEMA_VERSION}); upgrade fedkube"
    )


def test_mongo_new_documents_read_back_as_the_record_defaults() -> None:
    from fedkube.state import mongo

    job = {"name": "j", "manifest": "{}", **mongo._JOB_DEFAULTS}
    assert mongo._job(job) == JobRecord("j", {})
    attempt = {"job": "j", "round": 2, "attempt": 1, **mongo._ROUND_DEFAULTS}
    assert mongo._round(attempt) == RoundRecord("j", 2, 1)
