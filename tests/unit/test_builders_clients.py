"""Pure builders for in-cluster clients (spec.clients.template), the operator's
default storage and the job key: no cluster needed."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from fedkube.operator import builders as b
from fedkube.operator import names
from fedkube.spec import FederatedJob, SpecError, job_key, parse_job

NS = "team-a"
UID = "0f6c3d2e-1111-2222-3333-444455556666"
DEFAULTS = b.StorageDefaults(
    s3_endpoint="fedkube-s3.fedkube.svc:8333",
    s3_bucket="models",
    s3_secure=False,
    s3_secret="fedkube-s3",
    mongodb_secret="fedkube-mongodb",
    mongodb_database="fl",
)
SETTINGS = b.OperatorSettings(
    default_client_image="reg/client:1", storage=DEFAULTS, namespace="fedkube"
)


def make_job(spec: dict[str, Any] | None = None, *, uid: str | None = UID) -> FederatedJob:
    return parse_job(
        {
            "metadata": {"name": "lin", "namespace": NS, **({"uid": uid} if uid else {})},
            "spec": {"rounds": 3, **(spec or {})},
        }
    )


def templated(**tpl: Any) -> FederatedJob:
    return b.with_defaults(make_job({"clients": {"template": {"replicas": 3, **tpl}}}), SETTINGS)


def tokens(job: FederatedJob) -> dict[str, str]:
    return {c: f"fkc_token_of_{c}" for c in b.client_ids(job)}


def build(job: FederatedJob) -> list[dict[str, Any]]:
    storage = {"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk", "uri": "mongodb://m/"}
    return b.build_children(
        job,
        NS,
        UID,
        SETTINGS,
        reducer_token="rtok",
        storage=storage if b.uses_default_storage(job) else None,
        client_tokens=tokens(job) if job.spec.clients.template else None,
    )


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, [(o["kind"], o["metadata"]["name"]) for o in objs]
    return found[0]


# ---------------------------------------------------------------- the job key


def test_job_key_is_the_name_locally_and_namespace_name_uid_on_kubernetes() -> None:
    assert make_job(uid=None).key == "lin"
    assert make_job().key == "team-a/lin-0f6c3d2e"
    assert job_key("lin", None, UID) == "default/lin-0f6c3d2e"
    # same name, other namespace or other incarnation: another key
    other_ns = parse_job(
        {"metadata": {"name": "lin", "namespace": "b", "uid": UID}, "spec": {"rounds": 1}}
    )
    assert other_ns.key != make_job().key
    assert make_job(uid="ab" + UID[2:]).key != make_job().key


def test_the_pods_job_file_carries_the_uid_so_they_use_the_key() -> None:
    job = b.with_defaults(make_job(), SETTINGS)
    cm = one(build(job), "ConfigMap", names.config_map("lin"))
    doc = parse_job(yaml.safe_load(cm["data"][b.JOB_FILE_KEY]))
    assert doc.key == job.key == "team-a/lin-0f6c3d2e"


# ---------------------------------------------------------------- default storage


def test_a_job_without_storage_gets_the_operators_default_through_its_own_secret() -> None:
    job = b.with_defaults(make_job(), SETTINGS)
    s3, mongo = job.spec.storage.s3, job.spec.state_store.mongodb
    assert s3 is not None and mongo is not None
    assert (s3.endpoint, s3.bucket, s3.secure) == ("fedkube-s3.fedkube.svc:8333", "models", False)
    assert s3.credentials_secret == mongo.uri_secret == names.storage_secret("lin")
    assert mongo.database == "fl"
    objs = build(job)
    sec = one(objs, "Secret", names.storage_secret("lin"))
    data = {k: base64.b64decode(v).decode() for k, v in sec["data"].items()}
    assert data == {"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk", "uri": "mongodb://m/"}
    assert sec["metadata"]["ownerReferences"][0]["uid"] == UID
    # the Secret comes before every pod that reads it
    kinds = [o["kind"] for o in objs]
    assert kinds.index("Secret") < kinds.index("StatefulSet")


def test_a_job_naming_its_own_storage_keeps_it() -> None:
    own = {
        "storage": {"s3": {"endpoint": "mine:9000", "bucket": "b", "credentialsSecret": "s"}},
        "stateStore": {"mongodb": {"uriSecret": "m"}},
    }
    job = b.with_defaults(make_job(own), SETTINGS)
    assert job.spec == make_job(own).spec
    assert not b.uses_default_storage(job)
    assert names.storage_secret("lin") not in [o["metadata"]["name"] for o in build(job)]


def test_without_defaults_a_job_without_storage_is_refused_with_the_fix() -> None:
    job = b.with_defaults(make_job(), b.OperatorSettings())
    with pytest.raises(b.BuildError, match=r"spec.storage.s3 is required.*default storage"):
        build(job)


def test_the_default_storage_secret_needs_its_values() -> None:
    job = b.with_defaults(make_job(), SETTINGS)
    with pytest.raises(b.BuildError, match="default storage has no credentials"):
        b.build_children(job, NS, UID, SETTINGS, reducer_token="r")


# ---------------------------------------------------------------- in-cluster clients


def test_client_statefulset_runs_one_pod_per_client_with_its_own_token_file() -> None:
    job = templated(
        image="reg/linear:2",
        args=["--heartbeat", "2"],
        env=[{"name": "X", "value": "1"}],
        nodeSelector={"pool": "gpu"},
        tolerations=[{"key": "gpu", "operator": "Exists"}],
        resources={"limits": {"cpu": "500m"}},
        workingDir="/app",
    )
    sts = one(build(job), "StatefulSet", names.client_statefulset("lin"))
    assert sts["spec"]["replicas"] == 3
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "reg/linear:2"
    assert c["command"] == ["fedkube", "client"]
    args = c["args"]
    assert args[args.index("--connect") + 1] == f"{names.clients_service('lin')}:7070"
    assert args[args.index("--client-id") + 1] == "$(POD_NAME)"
    assert args[args.index("--token-file") + 1] == f"{b.CLIENT_TOKENS_MOUNT}/$(POD_NAME)"
    assert args[args.index("--job") + 1] == b.JOB_FILE
    assert args[args.index("--job-dir") + 1] == "/app"
    assert args[-2:] == ["--heartbeat", "2"]  # the template's own args come last
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert b.POD_INDEX_LABEL in env["FEDKUBE_CLIENT_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert env["X"]["value"] == "1"
    # never the reducer token nor the storage credentials
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in c["env"])
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert c["resources"] == {"limits": {"cpu": "500m"}}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["client-tokens"]["secret"]["secretName"] == names.client_tokens_secret("lin")


def test_client_image_defaults_to_the_operators_client_image() -> None:
    sts = one(build(templated()), "StatefulSet", names.client_statefulset("lin"))
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "reg/client:1"


def test_client_tokens_secret_has_one_key_per_pod_and_nothing_else() -> None:
    job = templated()
    sec = one(build(job), "Secret", names.client_tokens_secret("lin"))
    assert sorted(sec["data"]) == ["lin-client-0", "lin-client-1", "lin-client-2"]
    assert base64.b64decode(sec["data"]["lin-client-1"]).decode() == "fkc_token_of_lin-client-1"
    with pytest.raises(b.BuildError, match="no token for client"):
        b.build_client_tokens_secret(job, NS, UID, {"lin-client-0": "x"})


def test_suspend_scales_the_clients_to_zero() -> None:
    job = b.with_defaults(
        make_job({"suspend": True, "clients": {"template": {"replicas": 4}}}), SETTINGS
    )
    assert one(build(job), "StatefulSet", names.client_statefulset("lin"))["spec"]["replicas"] == 0


def test_no_template_no_client_objects() -> None:
    kinds = {
        (o["kind"], o["metadata"]["name"]) for o in build(b.with_defaults(make_job(), SETTINGS))
    }
    assert ("StatefulSet", names.client_statefulset("lin")) not in kinds
    assert ("Secret", names.client_tokens_secret("lin")) not in kinds


def test_template_replicas_are_bounded_by_the_tokens_secret() -> None:
    with pytest.raises(SpecError, match=r"spec.clients.template.replicas"):
        make_job({"clients": {"template": {"replicas": 5000}}})


def test_client_template_change_rolls_only_the_clients() -> None:
    a, c = templated(), templated(image="reg/other:3")
    assert b.config_hash(a, NS) == b.config_hash(c, NS)
    sa = one(build(a), "StatefulSet", names.client_statefulset("lin"))
    sc = one(build(c), "StatefulSet", names.client_statefulset("lin"))
    assert sa["spec"]["template"] != sc["spec"]["template"]


# ---------------------------------------------------------------- combiner TLS


def test_combiner_tls_secret_is_served_by_combiners_and_verified_by_the_others() -> None:
    job = b.with_defaults(
        make_job(
            {
                "combiners": {"tls": {"secretName": "lin-tls"}},
                "clients": {"template": {"replicas": 1}},
            }
        ),
        SETTINGS,
    )
    objs = build(job)
    pods = {
        "combiner": one(objs, "StatefulSet", names.combiner_statefulset("lin")),
        "reducer": one(objs, "Deployment", names.reducer_deployment("lin")),
        "client": one(objs, "StatefulSet", names.client_statefulset("lin")),
    }
    for role, obj in pods.items():
        pod = obj["spec"]["template"]["spec"]
        (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        keys = [i["key"] for i in tls["secret"]["items"]]
        c = pod["containers"][0]
        flags = c.get("command", []) + c.get("args", [])
        assert any(m["mountPath"] == b.TLS_MOUNT for m in c["volumeMounts"]), role
        if role == "combiner":
            # only the combiners hold the private key
            assert keys == ["tls.crt", "tls.key"]
            assert flags[flags.index("--tls-key") + 1] == f"{b.TLS_MOUNT}/tls.key"
        else:
            assert keys == ["ca.crt"], role
            assert flags[flags.index("--tls-ca") + 1] == f"{b.TLS_MOUNT}/ca.crt", role
            assert "--tls-key" not in flags


def test_without_tls_no_tls_flags_or_volumes() -> None:
    for obj in build(templated()):
        if obj["kind"] in ("StatefulSet", "Deployment"):
            pod = obj["spec"]["template"]["spec"]
            c = pod["containers"][0]
            assert "tls" not in [v["name"] for v in pod["volumes"]]
            assert not {"--tls-ca", "--tls-cert"} & set(c.get("command", []) + c.get("args", []))


def test_operator_default_tls_secret_applies_to_jobs_naming_none() -> None:
    settings = b.OperatorSettings(combiner_tls_secret="fedkube-combiner-tls")
    tls = b.with_defaults(make_job(), settings).spec.combiners.tls
    assert tls is not None and tls.secret_name == "fedkube-combiner-tls"
    own = b.with_defaults(make_job({"combiners": {"tls": {"secretName": "mine"}}}), settings)
    assert own.spec.combiners.tls is not None and own.spec.combiners.tls.secret_name == "mine"
