"""The FederatedJob spec: defaults, manifest round trip, and one test per invalid spec.

Every rejection must name the bad field by its manifest path (camelCase, from
the document root), because that is what a user greps their YAML for.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedkube.errors import SpecError
from fedkube.spec import (
    API_VERSION,
    KIND,
    MAX_NAME_LENGTH,
    FedAdamOptimizer,
    FedAvgAggregator,
    FedAvgOptimizer,
    FederatedJob,
    TrimmedMeanAggregator,
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
    assert c.round_timeout_seconds == 300.0
    assert c.wait_timeout_seconds == 120.0
    assert c.heartbeat_seconds == 5.0
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
        120.0,
        1,
    )
    assert s.retry.max_attempts == 3
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
    retry={"maxAttempts": 5},
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
    # Integers and seconds stay numbers; only Decimal fields become strings.
    assert spec["clients"]["roundTimeoutSeconds"] == 30.0
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
    assert "greater than 0" in msg


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
