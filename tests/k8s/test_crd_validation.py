"""The bounds of fedkube.spec as the real kube-apiserver enforces them (issue 8).

Each bad spec that `fedkube run` refuses is refused by the apiserver too,
through the CRD generated from the same models: a FederatedJob created with
it gets 422 Invalid naming the field. The one bound the apiserver cannot
express (train.config's size as JSON: a free-form object has no size rule) is
enforced by the operator, which parses every FederatedJob with
fedkube.spec.parse_job: the job goes to phase Failed with the message.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fedkube import spec
from fedkube.errors import SpecError
from tests.support.fixtures import scoped
from tests.support.k8s import ApiError, K8s, example_job, kube_path, wait_for

FEDJOBS = f"{spec.API_VERSION}/federatedjobs"


@pytest.fixture(scope="module")
def ns(k8s: K8s, crd: None) -> Iterator[str]:
    """One namespace for the module: refused objects are never stored."""
    yield from scoped(k8s.create_namespace("crd-validation"), k8s.delete_namespace)


def create(k8s: K8s, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = k8s.api.create(kube_path(FEDJOBS, namespace), manifest)
    return created


def refused(k8s: K8s, namespace: str, manifest: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        create(k8s, namespace, manifest)
    return info.value


Mutate = Callable[[dict[str, Any]], None]


def _clients(**fields: Any) -> Mutate:
    return lambda s: s["clients"].update(fields)


def _in(section: str, **fields: Any) -> Mutate:
    return lambda s: s.setdefault(section, {}).update(fields)


def _top(**fields: Any) -> Mutate:
    return lambda s: s.update(fields)


def _env(env: dict[str, str]) -> Mutate:
    return lambda s: s["train"].update(env=env)


BAD_SPECS: list[tuple[str, Mutate, str, str]] = [
    # id, change of .spec, the field the apiserver names, part of its message
    ("rounds-true", _top(rounds=True), "spec.rounds", 'must be of type integer: "boolean"'),
    ("rounds-string", _top(rounds="3"), "spec.rounds", 'must be of type integer: "string"'),
    ("rounds-fraction", _top(rounds=2.5), "spec.rounds", 'must be of type integer: "number"'),
    (
        "round-timeout-1e300",
        _clients(roundTimeoutSeconds=1e300),
        "spec.clients.roundTimeoutSeconds",
        "must be of type integer",
    ),
    (
        "round-timeout-over-7-days",
        _clients(roundTimeoutSeconds=spec.MAX_TIMEOUT_SECONDS + 1),
        "spec.clients.roundTimeoutSeconds",
        f"should be less than or equal to {spec.MAX_TIMEOUT_SECONDS}",
    ),
    (
        "round-timeout-fraction",
        _clients(roundTimeoutSeconds=0.5),
        "spec.clients.roundTimeoutSeconds",
        "must be of type integer",
    ),
    (
        "wait-timeout-0",
        _clients(waitTimeoutSeconds=0),
        "spec.clients.waitTimeoutSeconds",
        "should be greater than or equal to 1",
    ),
    (
        "heartbeat-0",
        _clients(heartbeatSeconds=0),
        "spec.clients.heartbeatSeconds",
        "should be greater than or equal to 1",
    ),
    (
        "heartbeat-0.001",
        _clients(heartbeatSeconds=0.001),
        "spec.clients.heartbeatSeconds",
        "must be of type integer",
    ),
    (
        "heartbeat-over-300",
        _clients(heartbeatSeconds=301),
        "spec.clients.heartbeatSeconds",
        "should be less than or equal to 300",
    ),
    (
        "validation-timeout-0",
        _in("validation", timeoutSeconds=0),
        "spec.validation.timeoutSeconds",
        "should be greater than or equal to 1",
    ),
    (
        "backoff-over-an-hour",
        _in("retry", backoffSeconds=3601),
        "spec.retry.backoffSeconds",
        "should be less than or equal to 3600",
    ),
    (
        "ttl-over-int32",
        _top(ttlSecondsAfterFinished=2**31),
        "spec.ttlSecondsAfterFinished",
        "should be less than or equal to 2147483647",
    ),
    ("suspend-string", _top(suspend="true"), "spec.suspend", 'must be of type boolean: "string"'),
    (
        "per-round-true",
        _clients(perRound=True),
        "spec.clients.perRound",
        'must be of type integer: "boolean"',
    ),
    (
        "max-examples-0",
        _in("weights", maxExamples=0),
        "spec.weights.maxExamples",
        "should be greater than or equal to 1",
    ),
    (
        "max-median-multiple-below-1",
        _in("weights", maxMedianMultiple="0.5"),
        "spec.weights.maxMedianMultiple",
        "spec.weights.maxMedianMultiple must be >= 1.0",
    ),
    (
        "max-median-multiple-inf",
        _in("weights", maxMedianMultiple="inf"),
        "spec.weights.maxMedianMultiple",
        "should match",
    ),
    (
        "max-median-multiple-number",
        _in("weights", maxMedianMultiple=3),
        "spec.weights.maxMedianMultiple",
        'must be of type string: "integer"',
    ),
    (
        "env-too-many",
        _env({f"V{i}": "x" for i in range(spec.MAX_ENV_ENTRIES + 1)}),
        "spec.train.env",
        f"must have at most {spec.MAX_ENV_ENTRIES} items",
    ),
    (
        "env-value-too-long",
        _env({"V": "x" * (spec.MAX_ENV_VALUE_LENGTH + 1)}),
        "spec.train.env.V",
        f"may not be more than {spec.MAX_ENV_VALUE_LENGTH} bytes",
    ),
]


# pydantic also takes a bare number for a decimal; the CRD insists on the string form.
LOCALLY_ACCEPTED = {"max-median-multiple-number"}


@pytest.mark.parametrize(
    ("case", "mutate", "field", "message"), BAD_SPECS, ids=[case[0] for case in BAD_SPECS]
)
def test_apiserver_refuses_each_bad_spec_naming_the_field(
    k8s: K8s, ns: str, case: str, mutate: Mutate, field: str, message: str
) -> None:
    m = example_job("bad")
    mutate(m["spec"])
    if case not in LOCALLY_ACCEPTED:  # fedkube run refuses it too, naming the same field
        with pytest.raises(SpecError) as local:
            spec.parse_job(copy.deepcopy(m))
        assert f"{field}: " in str(local.value), local.value
    err = refused(k8s, ns, m)
    assert err.status == 422, err
    assert err.reason == "Invalid", err.body
    text = str(err.body.get("message"))
    assert field in text and message in text, text
    causes = err.body.get("details", {}).get("causes", [])
    assert any(c.get("field", "").startswith(field) for c in causes), causes


def test_apiserver_accepts_the_bounds_and_stores_whole_seconds_as_integers(
    k8s: K8s, ns: str
) -> None:
    m = example_job("edges")
    m["spec"]["clients"].update(
        roundTimeoutSeconds=spec.MAX_TIMEOUT_SECONDS,
        waitTimeoutSeconds=30.0,  # a whole number written as a float
        heartbeatSeconds=spec.MIN_HEARTBEAT_SECONDS,
    )
    m["spec"]["retry"] = {"backoffSeconds": 0}
    m["spec"]["weights"] = {"maxExamples": 1000, "maxMedianMultiple": "3"}
    m["spec"]["train"]["env"] = {f"V{i}": "x" for i in range(spec.MAX_ENV_ENTRIES)}
    stored = create(k8s, ns, m)
    clients = stored["spec"]["clients"]
    assert clients["roundTimeoutSeconds"] == spec.MAX_TIMEOUT_SECONDS
    assert clients["waitTimeoutSeconds"] == 30
    assert stored["spec"]["weights"] == {"maxExamples": 1000, "maxMedianMultiple": "3"}
    # what the operator reads back parses, with the same values
    fetched = k8s.api.get(kube_path(FEDJOBS, ns, "edges"))
    assert isinstance(fetched["spec"]["clients"]["waitTimeoutSeconds"], int)
    job = spec.parse_job(
        {k: fetched[k] for k in ("apiVersion", "kind", "spec")} | {"metadata": {"name": "edges"}}
    )
    assert job.spec.clients.wait_timeout_seconds == 30
    assert job.spec.clients.heartbeat_seconds == 1
    assert job.spec.weights.max_examples == 1000
    assert job.spec.weights.max_median_multiple == 3.0


def test_defaults_of_the_new_fields_are_integers(k8s: K8s, ns: str) -> None:
    m = example_job("defaults")
    m["spec"] = {"rounds": 1}
    stored = create(k8s, ns, m)
    clients = stored["spec"]["clients"]
    assert (
        clients["roundTimeoutSeconds"],
        clients["waitTimeoutSeconds"],
        clients["heartbeatSeconds"],
    ) == (300, 120, 5)
    assert stored["spec"]["weights"] == {}
    assert stored["spec"]["retry"]["backoffSeconds"] == 2


# ---------------------------------------------------------------- train.config: the operator


class Operator:
    """`fedkube operator` for one namespace, as a real process (its own session)."""

    def __init__(self, k8s: K8s, namespace: str, log: Path) -> None:
        self.log_path = log
        self.fh = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-P",
                "-m",
                "fedkube",
                "operator",
                "--namespace",
                namespace,
                "--kubeconfig",
                str(k8s.kubeconfig),
                "--liveness-port",
                "0",
            ],
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONSAFEPATH": "1"},
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.fh.close()


def test_config_over_the_limit_passes_the_apiserver_but_the_operator_fails_the_job(
    k8s: K8s, crd: None, namespace: str, tmp_path: Path
) -> None:
    """The apiserver cannot bound a free-form object's size; the operator parses the
    CR with fedkube.spec.parse_job, so the same error reaches the status."""
    m = example_job("bigconfig")
    m["spec"]["train"]["config"] = {"blob": "x" * (spec.MAX_CONFIG_BYTES + 1)}
    assert len(json.dumps(m)) < 3 * 1024 * 1024  # under the apiserver's request limit
    create(k8s, namespace, m)  # accepted: the CRD cannot express this bound
    op = Operator(k8s, namespace, tmp_path / "operator.log")
    try:

        def status() -> dict[str, Any]:
            obj = k8s.api.get(kube_path(FEDJOBS, namespace, "bigconfig")) or {}
            st: dict[str, Any] = obj.get("status") or {}
            return st

        try:
            wait_for(lambda: status().get("phase") == "Failed", 60, "phase Failed")
        except AssertionError:
            raise AssertionError(f"no phase Failed; operator log:\n{op.log()}") from None
        message = status().get("message", "")
        assert "spec.train.config: " in message, message
        assert f"over the limit of {spec.MAX_CONFIG_BYTES} bytes" in message, message

        def events() -> str:
            evs = k8s.api.list(
                kube_path("events", namespace), fieldSelector="involvedObject.name=bigconfig"
            )
            return " ".join(f"{e.get('reason')}: {e.get('message')}" for e in evs)

        wait_for(lambda: "InvalidSpec" in events(), 30, "an InvalidSpec event")
        assert "spec.train.config" in events()
        # nothing was built for the refused job
        assert k8s.api.get(kube_path("statefulsets", namespace, "bigconfig-combiner")) is None
        assert k8s.api.get(kube_path("deployments", namespace, "bigconfig-reducer")) is None
    finally:
        op.stop()
