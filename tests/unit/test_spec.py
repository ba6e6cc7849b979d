"""The FederatedJob spec: defaults, manifest round trip, and one test per invalid spec.

Every rejection must name the bad field by its manifest path (camelCase, from
the document root), because that is what a user greps their YAML for.
"""

from __future__ import annotations

import copy
import datetime
import inspect
import json
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from fedkube import spec as spec_module
from fedkube.errors import SpecError
from fedkube.spec import (
    API_VERSION,
    KIND,
    MAX_CONFIG_BYTES,
    MAX_ENV_ENTRIES,
    MAX_JOB_FILE_BYTES,
    MAX_NAME_LENGTH,
    MAX_NESTING,
    MAX_SPEC_BYTES,
    FedAdamOptimizer,
    FedAvgAggregator,
    FedAvgOptimizer,
    FederatedJob,
    TrimmedMeanAggregator,
    config_json,
    job_from_json,
    load_job_file,
    parse_job,
)

REPO = Path(__file__).resolve().parents[2]


def manifest(**spec: Any) -> dict[str, Any]:
    """A minimal valid manifest; keyword arguments are merged into `spec`."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "demo"},
        "spec": {"rounds": 3, **spec},
    }


def rejected(data: Any) -> str:
    with pytest.raises(SpecError) as info:
        parse_job(data)
    return str(info.value)


# ---------------------------------------------------------------- defaults


def test_minimal_manifest_gets_documented_defaults() -> None:
    job = parse_job({"metadata": {"name": "demo"}, "spec": {"rounds": 3}})
    assert job.api_version == API_VERSION == "fedkube.dev/v1alpha1"
    assert job.kind == KIND == "FederatedJob"
    assert job.name == "demo"
    assert job.status is None
    md = job.metadata
    assert (md.namespace, md.labels, md.annotations) == (None, {}, {})
    s = job.spec
    assert s.rounds == 3
    assert s.suspend is False
    assert s.seed == 0
    assert s.ttl_seconds_after_finished is None
    m = s.model
    assert (m.seed_uri, m.init_command, m.init_fn) == (None, None, None)
    assert m.max_bytes == 2 * 1024**3
    t = s.train
    assert (t.command, t.fn, t.validate_command, t.validate_fn) == (None, None, None, None)
    assert (t.config, t.env) == ({}, {})
    c = s.clients
    assert c.per_round == 2
    assert c.min_updates == 1
    assert (c.round_timeout_seconds, c.wait_timeout_seconds, c.heartbeat_seconds) == (300, 120, 5)
    assert all(
        type(v) is int
        for v in (c.round_timeout_seconds, c.wait_timeout_seconds, c.heartbeat_seconds)
    )
    assert c.simulation.clients == 0
    assert c.simulation.in_process is True
    assert s.combiners.replicas == 1
    assert isinstance(s.aggregator, FedAvgAggregator)
    assert isinstance(s.server_optimizer, FedAvgOptimizer)
    v = s.validation
    assert (v.enabled, v.every, v.per_round, v.timeout_seconds, v.min_reports) == (
        True,
        1,
        None,
        120,
        1,
    )
    assert (s.retry.max_attempts, s.retry.backoff_seconds) == (3, 2)
    assert (s.weights.max_examples, s.weights.max_median_multiple) == (None, None)
    assert (s.storage.local, s.storage.s3) == (None, None)
    assert (s.state_store.sqlite, s.state_store.mongodb) == (None, None)


def test_parameter_defaults_of_tagged_choices() -> None:
    job = parse_job(
        manifest(aggregator={"name": "trimmedmean"}, serverOptimizer={"name": "fedadam"})
    )
    agg, opt = job.spec.aggregator, job.spec.server_optimizer
    assert isinstance(agg, TrimmedMeanAggregator)
    assert agg.trim_ratio == 0.1
    assert isinstance(opt, FedAdamOptimizer)
    assert (opt.learning_rate, opt.beta1, opt.beta2, opt.tau) == (0.01, 0.9, 0.99, 1e-3)
    fedavgm = parse_job(manifest(serverOptimizer={"name": "fedavgm"})).spec.server_optimizer
    assert (fedavgm.learning_rate, fedavgm.momentum) == (1.0, 0.9)  # type: ignore[union-attr]


def test_storage_and_state_store_sections_get_their_defaults() -> None:
    job = parse_job(manifest(storage={"local": {}}, stateStore={"mongodb": {}}))
    assert job.spec.storage.local is not None and job.spec.storage.local.path == "store"
    mongo = job.spec.state_store.mongodb
    assert mongo is not None
    assert (mongo.uri_env, mongo.database, mongo.uri_secret) == (
        "FEDKUBE_MONGODB_URI",
        "fedkube",
        None,
    )
    job = parse_job(manifest(stateStore={"sqlite": {}}))
    assert job.spec.state_store.sqlite is not None
    assert job.spec.state_store.sqlite.path == "state.db"


# ---------------------------------------------------------------- round trip


FULL = manifest(
    rounds=7,
    seed=11,
    suspend=True,
    model={"initFn": "pkg.task:init", "maxBytes": 1024},
    train={
        "fn": "pkg.task:train",
        "validateCommand": ["python", "v.py"],
        "config": {"epochs": 2, "lr": "0.05"},
        "env": {"A": "1"},
    },
    clients={
        "perRound": 4,
        "minUpdates": 3,
        "roundTimeoutSeconds": 30,
        "simulation": {"clients": 4, "inProcess": False},
    },
    combiners={"replicas": 2},
    aggregator={"name": "trimmedmean", "trimRatio": "0.2"},
    serverOptimizer={"name": "fedadam", "learningRate": "0.01", "tau": "0.001"},
    validation={"every": 2, "perRound": 3},
    retry={"maxAttempts": 5, "backoffSeconds": 0},
    weights={"maxExamples": 5000, "maxMedianMultiple": "3"},
    storage={"s3": {"endpoint": "minio:9000", "bucket": "fl", "secure": False}},
    stateStore={"sqlite": {"path": "s.db"}},
    ttlSecondsAfterFinished=60,
)


def test_manifest_round_trip_gives_an_equal_job() -> None:
    job = parse_job(copy.deepcopy(FULL))
    out = job.to_manifest()
    assert parse_job(out) == job
    # ... also through YAML, the way kubectl and `fedkube run` see it.
    assert parse_job(yaml.safe_load(yaml.safe_dump(out))) == job
    assert job_from_json(job.model_dump_json(by_alias=True)) == job


def test_manifest_form_is_camel_case_with_decimals_as_strings() -> None:
    out = parse_job(copy.deepcopy(FULL)).to_manifest()
    assert out["apiVersion"] == API_VERSION
    assert out["kind"] == KIND
    assert "status" not in out
    spec = out["spec"]
    assert spec["clients"]["minUpdates"] == 3
    assert spec["clients"]["simulation"]["inProcess"] is False
    assert spec["ttlSecondsAfterFinished"] == 60
    assert spec["aggregator"] == {"name": "trimmedmean", "trimRatio": "0.2"}
    opt = spec["serverOptimizer"]
    assert opt["learningRate"] == "0.01"
    assert opt["tau"] == "0.001"
    assert opt["beta1"] == "0.9"
    # Integers and seconds stay numbers (integers); only Decimal fields become strings.
    assert spec["clients"]["roundTimeoutSeconds"] == 30
    assert type(spec["clients"]["roundTimeoutSeconds"]) is int
    assert spec["weights"] == {"maxExamples": 5000, "maxMedianMultiple": "3.0"}
    assert spec["train"]["config"] == {"epochs": 2, "lr": "0.05"}
    assert "round_timeout_seconds" not in str(out)


def test_decimals_given_as_strings_or_numbers_are_parsed() -> None:
    a = parse_job(manifest(serverOptimizer={"name": "fedavgm", "learningRate": "0.01"}))
    b = parse_job(manifest(serverOptimizer={"name": "fedavgm", "learningRate": 0.01}))
    assert a.spec.server_optimizer.learning_rate == 0.01  # type: ignore[union-attr]
    assert a == b
    c = parse_job(manifest(aggregator={"name": "trimmedmean", "trimRatio": "1e-1"}))
    assert c.spec.aggregator.trim_ratio == 0.1  # type: ignore[union-attr]


def test_snake_case_names_are_accepted_in_python() -> None:
    job = parse_job({"metadata": {"name": "demo"}, "spec": {"rounds": 1}})
    assert FederatedJob.model_validate(job.model_dump()) == job


# ---------------------------------------------------------------- invalid specs


def test_non_numeric_decimal_string_is_rejected_naming_the_field() -> None:
    msg = rejected(manifest(serverOptimizer={"name": "fedadam", "learningRate": "fast"}))
    assert "spec.serverOptimizer.learningRate" in msg
    assert "not a number" in msg and "'fast'" in msg


def test_non_finite_decimal_is_rejected() -> None:
    msg = rejected(manifest(serverOptimizer={"name": "fedadam", "learningRate": "inf"}))
    assert "spec.serverOptimizer.learningRate" in msg
    assert "finite" in msg


def test_rounds_zero() -> None:
    msg = rejected(manifest(rounds=0))
    assert "spec.rounds" in msg
    assert "greater than or equal to 1" in msg


def test_missing_rounds() -> None:
    msg = rejected({"metadata": {"name": "demo"}, "spec": {}})
    assert "spec.rounds" in msg and "required" in msg


def test_min_updates_above_per_round() -> None:
    msg = rejected(manifest(clients={"perRound": 2, "minUpdates": 3}))
    assert "spec.clients.minUpdates" in msg
    assert "perRound" in msg


def test_unknown_aggregator_name() -> None:
    msg = rejected(manifest(aggregator={"name": "krum"}))
    assert "spec.aggregator.name" in msg
    assert "'krum'" in msg


def test_aggregator_parameter_of_another_aggregator() -> None:
    msg = rejected(manifest(aggregator={"name": "median", "trimRatio": "0.1"}))
    assert "spec.aggregator.trimRatio" in msg
    assert "Extra inputs are not permitted" in msg


def test_optimizer_parameter_of_another_optimizer() -> None:
    msg = rejected(manifest(serverOptimizer={"name": "fedavg", "learningRate": "0.1"}))
    assert "spec.serverOptimizer.learningRate" in msg


def test_unknown_field_is_rejected() -> None:
    msg = rejected(manifest(clients={"perRoundd": 2}))
    assert "spec.clients.perRoundd" in msg
    assert "Extra inputs are not permitted" in msg


def test_unknown_top_level_spec_field_is_rejected() -> None:
    assert "spec.aggregation" in rejected(manifest(aggregation={"name": "fedavg"}))


def test_wrong_api_version() -> None:
    msg = rejected({**manifest(), "apiVersion": "fedkube.dev/v1"})
    assert "apiVersion" in msg and API_VERSION in msg


def test_wrong_kind() -> None:
    msg = rejected({**manifest(), "kind": "Job"})
    assert "kind" in msg and KIND in msg


def test_name_too_long() -> None:
    assert parse_job({**manifest(), "metadata": {"name": "a" * MAX_NAME_LENGTH}})
    msg = rejected({**manifest(), "metadata": {"name": "a" * (MAX_NAME_LENGTH + 1)}})
    assert "metadata.name" in msg
    assert f"at most {MAX_NAME_LENGTH}" in msg


@pytest.mark.parametrize("name", ["Demo", "de_mo", "1demo", "demo-", "", "demo\n", "de.mo"])
def test_name_not_dns_1035(name: str) -> None:
    msg = rejected({**manifest(), "metadata": {"name": name}})
    assert "metadata.name" in msg
    assert "DNS-1035" in msg


def test_storage_with_both_local_and_s3() -> None:
    msg = rejected(manifest(storage={"local": {}, "s3": {"endpoint": "h:9000", "bucket": "b"}}))
    assert "spec.storage.s3" in msg
    assert "not both" in msg


def test_state_store_with_both_sqlite_and_mongodb() -> None:
    msg = rejected(manifest(stateStore={"sqlite": {}, "mongodb": {}}))
    assert "spec.stateStore.mongodb" in msg


def test_model_with_both_seed_uri_and_init_fn() -> None:
    msg = rejected(manifest(model={"seedUri": "seed.safetensors", "initFn": "pkg.m:init"}))
    assert "spec.model.initFn" in msg
    assert "seedUri" in msg


def test_negative_round_timeout() -> None:
    msg = rejected(manifest(clients={"roundTimeoutSeconds": -1}))
    assert "spec.clients.roundTimeoutSeconds" in msg
    assert "greater than or equal to 1" in msg


def test_trim_ratio_half_or_more() -> None:
    assert parse_job(manifest(aggregator={"name": "trimmedmean", "trimRatio": "0.49"}))
    msg = rejected(manifest(aggregator={"name": "trimmedmean", "trimRatio": "0.5"}))
    assert "spec.aggregator.trimRatio" in msg
    assert "less than 0.5" in msg


def test_list_item_is_named_by_index() -> None:
    msg = rejected(manifest(train={"command": ["python", 3]}))
    assert "spec.train.command[1]" in msg


def test_every_bad_field_is_listed() -> None:
    msg = rejected(manifest(rounds=0, clients={"perRoundd": 2}, retry={"maxAttempts": 0}))
    for path in ("spec.rounds", "spec.clients.perRoundd", "spec.retry.maxAttempts"):
        assert path in msg


@pytest.mark.parametrize("data", [None, [], "rounds: 3", 42])
def test_non_mapping_manifest(data: Any) -> None:
    msg = rejected(data)
    assert "must be a mapping" in msg
    assert type(data).__name__ in msg


# ---------------------------------------------------------------- bounded specs (issue 8)


SECONDS = {
    "spec.clients.roundTimeoutSeconds": lambda v: manifest(clients={"roundTimeoutSeconds": v}),
    "spec.clients.waitTimeoutSeconds": lambda v: manifest(clients={"waitTimeoutSeconds": v}),
    "spec.clients.heartbeatSeconds": lambda v: manifest(clients={"heartbeatSeconds": v}),
    "spec.validation.timeoutSeconds": lambda v: manifest(validation={"timeoutSeconds": v}),
    "spec.retry.backoffSeconds": lambda v: manifest(retry={"backoffSeconds": v}),
    "spec.ttlSecondsAfterFinished": lambda v: manifest(ttlSecondsAfterFinished=v),
}


@pytest.mark.parametrize("path", sorted(SECONDS))
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1e300, "less than or equal to"),
        (float("inf"), "must be an integer, not inf"),
        (float("-inf"), "must be an integer, not -inf"),
        (float("nan"), "must be an integer, not nan"),
        (0.5, "must be a whole number (an integer), not 0.5"),
        (10**30, "less than or equal to"),
        (-1, "greater than or equal to"),
        (True, "not a boolean"),
        ("30", "not a string ('30')"),
    ],
)
def test_every_seconds_field_is_a_bounded_integer(path: str, value: Any, message: str) -> None:
    msg = rejected(SECONDS[path](value))
    assert f"{path}: " in msg and message in msg, msg


@pytest.mark.parametrize(
    ("path", "good", "bad", "message"),
    [
        ("spec.clients.roundTimeoutSeconds", 604800, 604801, "less than or equal to 604800"),
        ("spec.clients.waitTimeoutSeconds", 1, 0, "greater than or equal to 1"),
        ("spec.clients.heartbeatSeconds", 1, 0, "greater than or equal to 1"),
        ("spec.clients.heartbeatSeconds", 300, 301, "less than or equal to 300"),
        ("spec.validation.timeoutSeconds", 604800, 604801, "less than or equal to 604800"),
        ("spec.retry.backoffSeconds", 0, 3601, "less than or equal to 3600"),
        ("spec.ttlSecondsAfterFinished", 0, 2**31, "less than or equal to 2147483647"),
    ],
)
def test_seconds_bounds(path: str, good: int, bad: int, message: str) -> None:
    assert parse_job(SECONDS[path](good))
    msg = rejected(SECONDS[path](bad))
    assert f"{path}: " in msg and message in msg, msg


def test_heartbeat_below_one_second_is_refused_naming_the_setting() -> None:
    """heartbeatSeconds: 0.001 made every client vanish with nothing pointing at it."""
    for value in (0.001, 0, 0.5):
        msg = rejected(manifest(clients={"heartbeatSeconds": value}))
        assert "spec.clients.heartbeatSeconds" in msg, msg


def test_whole_seconds_written_as_floats_are_integers() -> None:
    """30.0 is the number 30 (kube-apiserver accepts it for `type: integer` too)."""
    job = parse_job(manifest(clients={"roundTimeoutSeconds": 30.0}, rounds=3.0))
    assert job.spec.clients.round_timeout_seconds == 30
    assert type(job.spec.clients.round_timeout_seconds) is int
    assert type(job.spec.rounds) is int
    assert job == parse_job(manifest(clients={"roundTimeoutSeconds": 30}))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "must be an integer, not a boolean (true)"),
        (False, "must be an integer, not a boolean (false)"),
        ("3", "must be an integer, not a string ('3')"),
        (3.5, "not 3.5"),
        ([3], "valid integer"),
    ],
)
def test_rounds_must_be_an_integer(value: Any, message: str) -> None:
    msg = rejected(manifest(rounds=value))
    assert "spec.rounds: " in msg and message in msg, msg


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (manifest(clients={"perRound": True}), "spec.clients.perRound"),
        (manifest(combiners={"replicas": "2"}), "spec.combiners.replicas"),
        (manifest(seed=True), "spec.seed"),
        (manifest(model={"maxBytes": "1024"}), "spec.model.maxBytes"),
        (manifest(validation={"every": False}), "spec.validation.every"),
        (manifest(weights={"maxExamples": True}), "spec.weights.maxExamples"),
        (manifest(clients={"service": {"nodePort": "30001"}}), "spec.clients.service.nodePort"),
    ],
)
def test_other_integers_refuse_booleans_and_strings(data: dict[str, Any], path: str) -> None:
    msg = rejected(data)
    assert f"{path}: must be an integer, not a" in msg, msg


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (manifest(suspend="true"), "spec.suspend"),
        (manifest(suspend=1), "spec.suspend"),
        (manifest(validation={"enabled": "false"}), "spec.validation.enabled"),
        (manifest(clients={"simulation": {"inProcess": 0}}), "spec.clients.simulation.inProcess"),
        (
            manifest(storage={"s3": {"endpoint": "h:1", "bucket": "b", "secure": "no"}}),
            "spec.storage.s3.secure",
        ),
    ],
)
def test_booleans_are_only_true_or_false(data: dict[str, Any], path: str) -> None:
    msg = rejected(data)
    assert f"{path}: must be a boolean (true or false" in msg, msg


def test_decimals_refuse_booleans() -> None:
    msg = rejected(manifest(aggregator={"name": "trimmedmean", "trimRatio": True}))
    assert "spec.aggregator.trimRatio: not a number: true" in msg


def _spec_fields() -> list[tuple[str, Any]]:
    models = [
        c
        for _, c in inspect.getmembers(spec_module, inspect.isclass)
        if issubclass(c, BaseModel) and c.__module__ == spec_module.__name__
    ]
    return [(f"{m.__name__}.{n}", f) for m in models for n, f in m.model_fields.items()]


def test_every_integer_and_boolean_field_of_the_spec_is_strict() -> None:
    """A new field typed plain `int` or `bool` would accept true / "3" again."""
    integer_markers = typing.get_args(spec_module.Integer)[1:]
    boolean_markers = typing.get_args(spec_module.Boolean)[1:]
    checked = 0
    for name, field in _spec_fields():
        bare = [a for a in typing.get_args(field.annotation) if a is not type(None)]
        tp = bare[0] if len(bare) == 1 else field.annotation
        if tp not in (int, bool):
            continue
        markers = integer_markers if tp is int else boolean_markers
        assert all(any(m is k for m in field.metadata) for k in markers), (
            f"{name}: use fedkube.spec.{'Integer' if tp is int else 'Boolean'}"
        )
        checked += 1
    assert checked >= 20


def test_train_config_over_the_size_limit_is_refused() -> None:
    """A multi-megabyte config was accepted, then failed every attempt on gRPC's limit."""
    from fedkube.rpc import MAX_MESSAGE_BYTES

    assert MAX_CONFIG_BYTES * 8 <= MAX_MESSAGE_BYTES  # clearly below the control-message limit
    at_limit = {"blob": "x" * (MAX_CONFIG_BYTES - len(config_json({"blob": ""})))}
    assert len(config_json(at_limit)) == MAX_CONFIG_BYTES
    assert parse_job(manifest(train={"config": at_limit}))
    over = {"blob": "x" * (MAX_CONFIG_BYTES + 1)}
    msg = rejected(manifest(train={"config": over}))
    assert "spec.train.config: " in msg
    assert f"over the limit of {MAX_CONFIG_BYTES} bytes" in msg
    big = {"blob": "x" * 5_000_000}
    assert "spec.train.config: " in rejected(manifest(train={"config": big}))


def test_train_config_size_counts_escaped_characters() -> None:
    """The canonical JSON is ASCII: a non-ASCII character counts as its escape."""
    config = {"s": "\u00e9" * (MAX_CONFIG_BYTES // 6 + 1)}
    assert len(config_json(config)) > MAX_CONFIG_BYTES
    assert "spec.train.config: " in rejected(manifest(train={"config": config}))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"start": datetime.date(2024, 1, 1)}, "start is a date"),
        ({"tags": {"a", "b"}}, "tags is a set"),
        ({"blob": b"abc"}, "blob is a bytes"),
        ({"lr": [0.1, float("nan")]}, "lr[1] is nan"),
        ({"m": {1: "a"}}, "key 1 of m is not a string"),
    ],
)
def test_train_config_must_be_plain_json(config: dict[str, Any], message: str) -> None:
    msg = rejected(manifest(train={"config": config}))
    assert "spec.train.config: must be plain JSON: " in msg and message in msg, msg


def test_train_config_nesting_is_bounded() -> None:
    deep: Any = 1
    for _ in range(MAX_NESTING + 1):
        deep = [deep]
    msg = rejected(manifest(train={"config": {"deep": deep}}))
    assert "spec.train.config: " in msg and f"more than {MAX_NESTING} levels" in msg


def test_train_env_is_bounded() -> None:
    many = {f"V{i}": "x" for i in range(MAX_ENV_ENTRIES + 1)}
    msg = rejected(manifest(train={"env": many}))
    assert "spec.train.env: " in msg and f"at most {MAX_ENV_ENTRIES} items" in msg
    msg = rejected(manifest(train={"env": {"V": "x" * (spec_module.MAX_ENV_VALUE_LENGTH + 1)}}))
    assert "spec.train.env.V: " in msg
    for name in ("A=B", "", "A\0"):
        msg = rejected(manifest(train={"env": {name: "x"}}))
        assert "spec.train.env: " in msg and "not an environment variable name" in msg
    msg = rejected(manifest(train={"env": {"A": "x\0y"}}))
    assert "spec.train.env: the value of A contains a NUL" in msg


def test_the_whole_spec_is_bounded_naming_its_largest_part() -> None:
    """On Kubernetes kubectl and the operator each keep the spec in annotations (256 KiB)."""
    assert 2 * MAX_SPEC_BYTES + 32 * 1024 <= 256 * 1024
    assert MAX_CONFIG_BYTES + 16 * 1024 <= MAX_SPEC_BYTES  # a full config leaves room
    value = "x" * spec_module.MAX_ENV_VALUE_LENGTH
    env = {f"V{i}": value for i in range(MAX_SPEC_BYTES // len(value) + 1)}
    msg = rejected(manifest(train={"env": env}))
    assert "\n  spec: is " in msg  # the spec itself, not one of its fields
    assert f"over the limit of {MAX_SPEC_BYTES} bytes" in msg
    assert "the largest part is spec.train.env" in msg
    # just under the limit: accepted
    small = dict(list(env.items())[: MAX_SPEC_BYTES // len(value) - 1])
    assert parse_job(manifest(train={"env": small}))


def test_service_annotations_are_bounded() -> None:
    many = {f"a{i}": "x" for i in range(spec_module.MAX_ANNOTATIONS + 1)}
    msg = rejected(manifest(clients={"service": {"annotations": many}}))
    assert "spec.clients.service.annotations: " in msg
    long = {"a": "x" * (spec_module.MAX_ANNOTATION_LENGTH + 1)}
    assert "spec.clients.service.annotations.a: " in rejected(
        manifest(clients={"service": {"annotations": long}})
    )


def test_weights_policy_is_parsed() -> None:
    job = parse_job(manifest(weights={"maxExamples": 1000, "maxMedianMultiple": "3"}))
    assert job.spec.weights.max_examples == 1000
    assert job.spec.weights.max_median_multiple == 3.0
    assert parse_job(manifest(weights={"maxMedianMultiple": "1"})).spec.weights.max_examples is None


@pytest.mark.parametrize(
    ("weights", "path", "message"),
    [
        ({"maxExamples": 0}, "spec.weights.maxExamples", "greater than or equal to 1"),
        ({"maxExamples": 2**53 + 1}, "spec.weights.maxExamples", "less than or equal to"),
        ({"maxExamples": "10"}, "spec.weights.maxExamples", "not a string"),
        ({"maxExamples": 1.5}, "spec.weights.maxExamples", "whole number"),
        ({"maxMedianMultiple": "0.99"}, "spec.weights.maxMedianMultiple", "greater than or equal"),
        ({"maxMedianMultiple": "inf"}, "spec.weights.maxMedianMultiple", "finite"),
        ({"maxMedianMultiple": "nan"}, "spec.weights.maxMedianMultiple", "finite"),
        ({"maxMedianMultiple": "1e400"}, "spec.weights.maxMedianMultiple", "finite"),
        ({"maxMedianMultiple": "1e7"}, "spec.weights.maxMedianMultiple", "less than or equal"),
        ({"maxMedianMultiple": "lots"}, "spec.weights.maxMedianMultiple", "not a number"),
        ({"maxExample": 3}, "spec.weights.maxExample", "Extra inputs are not permitted"),
    ],
)
def test_weights_bounds(weights: dict[str, Any], path: str, message: str) -> None:
    msg = rejected(manifest(weights=weights))
    assert f"{path}: " in msg and message in msg, msg


# ---------------------------------------------------------------- load_job_file


def test_load_job_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match="cannot read job file") as info:
        load_job_file(path)
    assert str(path) in str(info.value)


def test_load_job_file_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("kind: FederatedJob\nspec: [rounds: 3\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_job_file(path)


def test_load_job_file_without_a_federated_job(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n")
    with pytest.raises(SpecError, match="no document with kind: FederatedJob"):
        load_job_file(path)
    path.write_text("")
    with pytest.raises(SpecError, match="no document with kind: FederatedJob"):
        load_job_file(path)


def test_load_job_file_picks_the_federated_job_of_several_documents(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    docs = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}},
        None,
        manifest(rounds=5),
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}},
    ]
    path.write_text(yaml.safe_dump_all(docs))
    job = load_job_file(path)
    assert job.name == "demo"
    assert job.spec.rounds == 5


def test_load_job_file_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest(clients={"perRound": 1, "minUpdates": 2})))
    with pytest.raises(SpecError) as info:
        load_job_file(path)
    assert str(path) in str(info.value)
    assert "spec.clients.minUpdates" in str(info.value)


BOMB = """\
apiVersion: fedkube.dev/v1alpha1
kind: FederatedJob
metadata: {name: bomb}
spec:
  rounds: 1
  train:
    config:
      a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
      f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
      g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
      h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
      i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_yaml_alias_bomb_is_refused_quickly_naming_the_file(tmp_path: Path) -> None:
    """A ~1 KB alias-expansion bomb drove `fedkube run` past 3 GiB."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 1024
    t0 = time.monotonic()
    with pytest.raises(SpecError) as info:
        load_job_file(path)
    elapsed = time.monotonic() - t0
    msg = str(info.value)
    assert msg.startswith(f"{path}: line 8: ")
    assert "anchors and aliases (&a) are not allowed in a job file" in msg
    assert elapsed < 30, f"refusing a 1 KB file took {elapsed:.1f} s"  # generous: not a benchmark


def test_yaml_alias_is_refused_even_to_a_small_value(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    text = yaml.safe_dump(manifest(clients={"perRound": 2, "minUpdates": 2}), sort_keys=False)
    text = text.replace("perRound: 2", "perRound: &two 2").replace(
        "minUpdates: 2", "minUpdates: *two"
    )
    path.write_text(text)
    with pytest.raises(SpecError, match=r"anchors and aliases \(&two\)") as info:
        load_job_file(path)
    assert str(path) in str(info.value)
    # An alias without its anchor: refused the same way.
    path.write_text("kind: FederatedJob\nspec: *nothing\n")
    with pytest.raises(SpecError, match=r"line 2: YAML anchors and aliases \(\*nothing\)") as info:
        load_job_file(path)
    assert str(path) in str(info.value)


def test_job_file_over_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    head = yaml.safe_dump(manifest())
    path.write_text(head + "# " + "x" * (MAX_JOB_FILE_BYTES - len(head) - 3) + "\n")
    assert path.stat().st_size == MAX_JOB_FILE_BYTES
    assert load_job_file(path).name == "demo"  # at the limit: fine
    path.write_text(head + "# " + "x" * MAX_JOB_FILE_BYTES + "\n")
    with pytest.raises(SpecError) as info:
        load_job_file(path)
    assert str(path) in str(info.value)
    assert f"larger than {MAX_JOB_FILE_BYTES} bytes" in str(info.value)


@pytest.mark.parametrize("levels", [MAX_NESTING + 1, 100_000])
def test_deeply_nested_job_file_is_refused(tmp_path: Path, levels: int) -> None:
    path = tmp_path / "deep.yaml"
    deep = "[" * levels + "]" * levels
    path.write_text(yaml.safe_dump(manifest()) + f"extra: {deep}\n")
    with pytest.raises(SpecError) as info:
        load_job_file(path)
    assert str(info.value).startswith(f"{path}: ")
    # ours below libyaml's own limit (1000), libyaml's above it
    assert "nested more than" in str(info.value) or "maximum nesting depth" in str(info.value)
    if levels < 1000:
        assert f"line 7: nested more than {MAX_NESTING} levels deep" in str(info.value)


def test_yaml_values_that_are_not_json_are_refused_in_the_config(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    text = yaml.safe_dump(manifest(train={"config": {"start": "DATE"}}))
    path.write_text(text.replace("DATE", "2024-01-01"))  # unquoted: a YAML date
    with pytest.raises(SpecError) as info:
        load_job_file(path)
    assert "spec.train.config: must be plain JSON: start is a date" in str(info.value)


def test_job_from_json_is_bounded() -> None:
    assert job_from_json(json.dumps(manifest())).name == "demo"
    with pytest.raises(SpecError, match="larger than"):
        job_from_json(json.dumps(manifest()) + " " * MAX_JOB_FILE_BYTES)
    with pytest.raises(SpecError, match="not valid JSON"):
        job_from_json("[" * 200_000 + "]" * 200_000)
    with pytest.raises(SpecError, match=r"spec\.rounds: must be an integer, not a boolean"):
        job_from_json(json.dumps(manifest(rounds=True)))


def test_example_job_files_are_valid() -> None:
    examples = sorted((REPO / "examples").glob("*/job.yaml"))
    assert examples
    for path in examples:
        load_job_file(path)


# ---------------------------------------------------------------- CLI


def test_cli_run_rejects_an_invalid_job_before_starting_anything(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(manifest(clients={"perRound": 2, "minUpdates": 5})))
    workdir = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "fedkube", "run", str(bad), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "spec.clients.minUpdates" in proc.stdout + proc.stderr
    assert not (workdir / "state.db").exists()
    assert not workdir.exists() or not any(workdir.iterdir())
