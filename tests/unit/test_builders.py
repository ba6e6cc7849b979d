"""The operator's pure builders: FederatedJob -> child manifests.

No cluster here: these check the dicts the operator server-side-applies (names,
labels, owner references, commands, env, ports, probes, volumes, security).
The status block the operator computes is tested in test_status.py.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from fedkube.cli import app
from fedkube.operator import builders as b
from fedkube.operator import names
from fedkube.rpc import CLIENT_TOKEN_ENV, REDUCER_TOKEN_ENV
from fedkube.spec import API_VERSION, KIND, MAX_NAME_LENGTH, FederatedJob, load_job_file, parse_job

NS = "team-a"
UID = "0f6c3d2e-1111-2222-3333-444455556666"
SETTINGS = b.OperatorSettings()
REDUCER_TOKEN = "reducer-secret-token"

BASE_SPEC: dict[str, Any] = {
    "rounds": 5,
    "combiners": {"replicas": 3},
    "storage": {"s3": {"endpoint": "s3.svc:8333", "bucket": "models", "credentialsSecret": "s3"}},
    "stateStore": {"mongodb": {"uriSecret": "mongo"}},
}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def make_job(
    name: str = "mnist", metadata: dict[str, Any] | None = None, **spec: Any
) -> FederatedJob:
    return parse_job(
        {"metadata": {"name": name, **(metadata or {})}, "spec": deep_merge(BASE_SPEC, spec)}
    )


def children(job: FederatedJob | None = None, **kw: Any) -> list[dict[str, Any]]:
    return b.build_children(
        job or make_job(),
        NS,
        UID,
        kw.get("settings", SETTINGS),
        reducer_token=kw.get("reducer_token", REDUCER_TOKEN),
    )


def by_kind(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, (kind, name, [o["metadata"]["name"] for o in found])
    return found[0]


def sts(job: FederatedJob | None = None, settings: b.OperatorSettings = SETTINGS) -> dict[str, Any]:
    return b.build_combiner_statefulset(job or make_job(), NS, UID, settings)


def deploy(
    job: FederatedJob | None = None, settings: b.OperatorSettings = SETTINGS
) -> dict[str, Any]:
    return b.build_reducer_deployment(job or make_job(), NS, UID, settings)


def container(workload: dict[str, Any]) -> dict[str, Any]:
    cs = workload["spec"]["template"]["spec"]["containers"]
    assert len(cs) == 1
    return cs[0]


def env_map(c: dict[str, Any]) -> dict[str, Any]:
    names_ = [e["name"] for e in c["env"]]
    assert len(names_) == len(set(names_)), f"duplicate env: {names_}"
    return {e["name"]: e.get("valueFrom", e.get("value")) for e in c["env"]}


def secret_ref(name: str, key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": name, "key": key}}


def pod_hash(workload: dict[str, Any]) -> str:
    return workload["spec"]["template"]["metadata"]["annotations"][b.CONFIG_HASH_ANNOTATION]


# ---------------------------------------------------------------- names


def test_child_names() -> None:
    assert names.config_map("mnist") == "mnist-job"
    assert names.tokens_secret("mnist") == "mnist-tokens"
    assert names.reducer("mnist") == "mnist-reducer"
    assert names.combiner("mnist") == "mnist-combiner"
    assert names.combiner_pod("mnist", 2) == "mnist-combiner-2"
    assert names.clients_service("mnist") == "mnist-clients"
    assert names.reducer_deployment("mnist") == names.reducer_service("mnist") == "mnist-reducer"
    assert names.combiner_statefulset("mnist") == "mnist-combiner"
    assert names.combiner_headless_service("mnist") == "mnist-combiner"
    assert (
        names.combiner_address("mnist", 1, 7070, "ml")
        == "mnist-combiner-1.mnist-combiner.ml.svc:7070"
    )


def test_combiner_template_string_exactly() -> None:
    assert (
        names.combiner_template("mnist", 7070, "ml")
        == "mnist-combiner-{i}=mnist-combiner-{i}.mnist-combiner.ml.svc:7070"
    )
    assert (
        names.combiner_template("a-b", 9000, "x")
        == "a-b-combiner-{i}=a-b-combiner-{i}.a-b-combiner.x.svc:9000"
    )


def test_combiner_template_expands_to_the_statefulset_pods_through_the_headless_service() -> None:
    from fedkube.reducer import expand_template

    job = make_job(combiners={"replicas": 3, "port": 7171})
    flags = container(deploy(job))["command"]
    template = flags[flags.index("--combiner-template") + 1]
    assert expand_template(template, 3) == {
        names.combiner_pod("mnist", i): names.combiner_address("mnist", i, 7171, NS)
        for i in range(3)
    }
    # the host part is "<pod>.<headless service>" and the service is the StatefulSet's serviceName
    statefulset = sts(job)
    assert statefulset["spec"]["serviceName"] == names.combiner("mnist")
    headless = b.build_combiner_headless_service(job, NS, UID)
    assert headless["metadata"]["name"] == statefulset["spec"]["serviceName"]


DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def test_child_names_fit_kubernetes_limits_for_the_longest_job_name() -> None:
    name = "j" + "x" * (MAX_NAME_LENGTH - 2) + "z"
    job = make_job(name=name)  # the spec accepts it
    for obj in children(job):
        n = obj["metadata"]["name"]
        assert len(n) <= 63 and DNS_1035.fullmatch(n), n
        for v in obj["metadata"]["labels"].values():
            assert len(v) <= 63
    # StatefulSet: its pods get controller-revision-hash "<sts>-<hash of <= 10 chars>" (a label
    # value, <= 63), so the name must leave 11 characters (kubernetes/kubernetes#64023).
    sts_name = by_kind(children(job), "StatefulSet")["metadata"]["name"]
    assert len(sts_name) == MAX_NAME_LENGTH + len("-combiner") == 49
    assert len(sts_name) + 1 + names.REVISION_HASH_MAX <= 63
    assert names.STATEFULSET_NAME_MAX == 52
    # the last pod (replicas <= 256) is also its hostname and its pod-name label
    last = names.combiner_pod(name, names.MAX_COMBINER_ORDINAL)
    assert last.endswith("-combiner-255") and len(last) <= 63
    assert names.check_lengths(name) == []


def test_check_lengths_reports_a_statefulset_name_without_room_for_the_revision_hash() -> None:
    assert names.check_lengths("x" * 43) == []  # 52 characters exactly
    problems = names.check_lengths("x" * 44)
    assert len(problems) == 1 and "controller-revision-hash" in problems[0]
    assert any("longer than 63" in p for p in names.check_lengths("x" * 60))


def test_labels_and_selectors() -> None:
    assert names.labels("mnist", "reducer") == {
        "app.kubernetes.io/name": "fedkube",
        "app.kubernetes.io/instance": "mnist",
        "app.kubernetes.io/component": "reducer",
        "app.kubernetes.io/managed-by": "fedkube-operator",
        "fedkube.dev/job": "mnist",
    }
    assert names.selector("mnist", "combiner") == {
        "app.kubernetes.io/name": "fedkube",
        "app.kubernetes.io/instance": "mnist",
        "app.kubernetes.io/component": "combiner",
    }
    assert (
        names.selector_string("mnist", "combiner")
        == "app.kubernetes.io/name=fedkube,app.kubernetes.io/instance=mnist,"
        "app.kubernetes.io/component=combiner"
    )
    with pytest.raises(ValueError, match="unknown component"):
        names.labels("mnist", "dashboard")


# ---------------------------------------------------------------- every child


def test_build_children_in_apply_order() -> None:
    got = [(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in children()]
    assert got == [
        ("v1", "ConfigMap", "mnist-job"),
        ("v1", "Secret", "mnist-tokens"),
        ("v1", "Service", "mnist-reducer"),
        ("v1", "Service", "mnist-combiner"),
        ("v1", "Service", "mnist-clients"),
        ("apps/v1", "StatefulSet", "mnist-combiner"),
        ("apps/v1", "Deployment", "mnist-reducer"),
    ]


COMPONENT_OF = {
    ("ConfigMap", "mnist-job"): "config",
    ("Secret", "mnist-tokens"): "tokens",
    ("Service", "mnist-reducer"): "reducer",
    ("Service", "mnist-combiner"): "combiner",
    ("Service", "mnist-clients"): "combiner",
    ("StatefulSet", "mnist-combiner"): "combiner",
    ("Deployment", "mnist-reducer"): "reducer",
}


def test_every_child_has_namespace_labels_and_a_controlling_owner_reference() -> None:
    for obj in children():
        meta = obj["metadata"]
        component = COMPONENT_OF[(obj["kind"], meta["name"])]
        assert meta["namespace"] == NS
        assert meta["labels"] == names.labels("mnist", component)
        assert meta["ownerReferences"] == [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": "mnist",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    assert API_VERSION == "fedkube.dev/v1alpha1" and KIND == "FederatedJob"


def test_pod_templates_carry_all_labels_and_selectors_use_instance_and_component() -> None:
    for kind, component in (("StatefulSet", "combiner"), ("Deployment", "reducer")):
        w = by_kind(children(), kind)
        tpl_labels = w["spec"]["template"]["metadata"]["labels"]
        assert tpl_labels == names.labels("mnist", component)
        assert w["spec"]["selector"] == {"matchLabels": names.selector("mnist", component)}
        assert w["spec"]["selector"]["matchLabels"].items() <= tpl_labels.items()


def test_service_selectors_match_their_pods() -> None:
    objs = children()
    reducer_pods = by_kind(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    combiner_pods = by_kind(objs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    for svc_name, pods in (
        ("mnist-reducer", reducer_pods),
        ("mnist-combiner", combiner_pods),
        ("mnist-clients", combiner_pods),
    ):
        sel = by_kind(objs, "Service", svc_name)["spec"]["selector"]
        assert sel.items() <= pods.items(), svc_name
    assert not (
        by_kind(objs, "Service", "mnist-reducer")["spec"]["selector"].items()
        <= combiner_pods.items()
    )


def test_build_children_takes_the_reducer_token_by_keyword_only() -> None:
    job = make_job()
    with pytest.raises(b.BuildError, match="empty reducer token"):
        b.build_children(job, NS, UID, SETTINGS, reducer_token="")
    with pytest.raises(TypeError):
        b.build_children(job, NS, UID, SETTINGS, REDUCER_TOKEN)  # type: ignore[misc]
    with pytest.raises(TypeError):  # there is no client token any more
        b.build_children(job, NS, UID, SETTINGS, client_token="c", reducer_token="r")  # type: ignore[call-arg]
    assert not hasattr(b, "Tokens") and not hasattr(names, "CLIENT_TOKEN_KEY")


def test_no_child_carries_a_client_token() -> None:
    """Clients have per-client credentials (``fedkube clients issue``): the operator
    makes no shared client token, and no pod gets one."""
    objs = children()
    secret = by_kind(objs, "Secret")
    assert set(secret["data"]) == {"reducer-token"}
    assert "stringData" not in secret
    for kind in ("StatefulSet", "Deployment"):
        c = container(by_kind(objs, kind))
        env = env_map(c)
        assert CLIENT_TOKEN_ENV not in env, kind
        refs = [v["secretKeyRef"] for v in env.values() if "secretKeyRef" in v]
        assert names.LEGACY_CLIENT_TOKEN_KEY not in {r["key"] for r in refs}, kind
    assert "client-token" not in json.dumps(objs)


def test_children_are_plain_json_without_shared_objects() -> None:
    objs = children()
    assert json.loads(json.dumps(objs)) == objs
    assert "&id" not in yaml.safe_dump_all(objs)  # no YAML anchors: no dict appears twice
    seen: dict[int, Any] = {}

    def walk(x: Any) -> None:
        if isinstance(x, dict | list):
            assert id(x) not in seen, f"shared object: {x!r}"
            seen[id(x)] = x
            for v in x.values() if isinstance(x, dict) else x:
                walk(v)

    walk(objs)


def test_builders_are_idempotent_and_do_not_touch_the_job() -> None:
    job = make_job(combiners={"resources": {"limits": {"cpu": "2"}}})
    before = job.model_dump()
    first = children(job)
    second = children(job)
    assert first == second
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    # a caller that edits the result does not edit the job
    container(by_kind(first, "StatefulSet"))["resources"]["limits"]["cpu"] = "99"
    assert job.model_dump() == before
    assert children(job) == second


# ---------------------------------------------------------------- ConfigMap and Secret


def test_config_map_holds_the_job_and_the_pods_can_load_it(tmp_path: Path) -> None:
    job = make_job(
        metadata={
            "namespace": NS,
            "uid": UID,
            "resourceVersion": "42",
            "labels": {"team": "a"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        },
        serverOptimizer={"name": "fedadam", "learningRate": "0.05"},
    )
    cm = b.build_config_map(job, NS, UID)
    assert cm["apiVersion"] == "v1" and cm["kind"] == "ConfigMap"
    assert set(cm["data"]) == {"job.yaml"}
    doc = yaml.safe_load(cm["data"]["job.yaml"])
    # uid stays: with namespace and name it makes the job key the pods use
    assert doc["metadata"] == {"name": "mnist", "namespace": NS, "uid": UID}
    assert load_job_file_text(cm["data"]["job.yaml"], tmp_path).key == f"{NS}/mnist-0f6c3d2e"
    assert doc == b.job_manifest(job, NS)
    assert doc["spec"] == job.to_manifest()["spec"]
    assert doc["spec"]["serverOptimizer"]["learningRate"] == "0.05"
    path = tmp_path / "job.yaml"
    path.write_text(cm["data"]["job.yaml"])
    assert load_job_file(path).spec == job.spec
    assert cm["metadata"]["annotations"] == {b.CONFIG_HASH_ANNOTATION: b.config_hash(job, NS)}


def load_job_file_text(text: str, tmp_path: Path) -> FederatedJob:
    path = tmp_path / "key.yaml"
    path.write_text(text)
    return load_job_file(path)


def test_tokens_secret_holds_only_the_reducer_token_in_data() -> None:
    job = make_job()
    s = b.build_tokens_secret(job, NS, UID, "rtok")
    assert s["apiVersion"] == "v1" and s["kind"] == "Secret" and s["type"] == "Opaque"
    # data, not stringData: server-side apply would keep a key dropped from stringData
    assert s["data"] == {"reducer-token": base64.b64encode(b"rtok").decode()}
    assert "stringData" not in s
    assert s["metadata"]["name"] == "mnist-tokens"
    secret = by_kind(children(job, reducer_token="r-\u00e9-tok"), "Secret")
    assert base64.b64decode(secret["data"]["reducer-token"]).decode() == "r-\u00e9-tok"
    assert names.REDUCER_TOKEN_KEY == "reducer-token"


def test_tokens_secret_rejects_an_empty_reducer_token() -> None:
    with pytest.raises(b.BuildError, match="FederatedJob 'mnist': empty reducer token"):
        b.build_tokens_secret(make_job(), NS, UID, "")


# ---------------------------------------------------------------- reducer Deployment


def test_reducer_deployment_shape() -> None:
    d = deploy()
    assert d["apiVersion"] == "apps/v1" and d["kind"] == "Deployment"
    assert d["metadata"]["name"] == "mnist-reducer"
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["strategy"] == {"type": "Recreate"}
    assert container(d)["name"] == "reducer"


def test_reducer_command_exactly() -> None:
    c = container(deploy(settings=b.OperatorSettings(log_level="debug")))
    assert c["command"] == [
        "fedkube",
        "reducer",
        "--job",
        "/etc/fedkube/job.yaml",
        "--combiner-template",
        "mnist-combiner-{i}=mnist-combiner-{i}.mnist-combiner.team-a.svc:7070",
        "--workdir",
        "/var/lib/fedkube",
        "--health-port",
        "8080",
        "--linger",
        "--log-level",
        "debug",
    ]
    assert "args" not in c


def _cli_flags(command: str) -> set[str]:
    group: Any = typer.main.get_command(app)
    cmd = group.commands[command]
    return {opt for p in cmd.params for opt in p.opts if opt.startswith("--")}


@pytest.mark.parametrize(("command", "workload"), [("reducer", deploy), ("combiner", sts)])
def test_commands_use_only_flags_the_cli_has(command: str, workload: Any) -> None:
    argv = container(workload())["command"]
    assert argv[:2] == ["fedkube", command]
    used = {a for a in argv[2:] if a.startswith("--")}
    assert used <= _cli_flags(command), used - _cli_flags(command)


def test_reducer_env_comes_from_secrets() -> None:
    env = env_map(container(deploy()))
    assert env == {
        REDUCER_TOKEN_ENV: secret_ref("mnist-tokens", "reducer-token"),
        "AWS_ACCESS_KEY_ID": secret_ref("s3", "AWS_ACCESS_KEY_ID"),
        "AWS_SECRET_ACCESS_KEY": secret_ref("s3", "AWS_SECRET_ACCESS_KEY"),
        "FEDKUBE_MONGODB_URI": secret_ref("mongo", "uri"),
    }
    assert REDUCER_TOKEN_ENV == "FEDKUBE_REDUCER_TOKEN"
    assert CLIENT_TOKEN_ENV not in env  # the reducer never needs a client token


def test_mongodb_uri_env_name_follows_the_spec() -> None:
    job = make_job(stateStore={"mongodb": {"uriSecret": "db-conn", "uriEnv": "MY_MONGO"}})
    for w in (deploy(job), sts(job)):
        env = env_map(container(w))
        assert env["MY_MONGO"] == secret_ref("db-conn", "uri")
        assert "FEDKUBE_MONGODB_URI" not in env


def test_reducer_port_and_probes() -> None:
    c = container(deploy())
    # one port for probes, /status and Prometheus, named for the scrape
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    live, ready = c["livenessProbe"], c["readinessProbe"]
    assert live["httpGet"] == {"path": "/healthz", "port": 8080}
    assert ready["httpGet"] == {"path": "/healthz", "port": 8080}
    assert live["periodSeconds"] == 10 and live["failureThreshold"] == 6
    assert ready["periodSeconds"] < live["periodSeconds"]


@pytest.mark.parametrize("workload", [deploy, sts])
def test_pods_mount_the_job_and_writable_dirs_on_a_read_only_root(workload: Any) -> None:
    w = workload()
    pod = w["spec"]["template"]["spec"]
    c = container(w)
    assert pod["volumes"] == [
        {"name": "job", "configMap": {"name": "mnist-job"}},
        {"name": "work", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    assert c["volumeMounts"] == [
        {"name": "job", "mountPath": "/etc/fedkube", "readOnly": True},
        {"name": "work", "mountPath": "/var/lib/fedkube"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    argv = c["command"]
    assert argv[argv.index("--job") + 1] == "/etc/fedkube/job.yaml"
    assert argv[argv.index("--workdir") + 1] == "/var/lib/fedkube"


@pytest.mark.parametrize("workload", [deploy, sts])
def test_pods_are_locked_down(workload: Any) -> None:
    w = workload()
    pod = w["spec"]["template"]["spec"]
    assert container(w)["securityContext"] == {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False


@pytest.mark.parametrize("workload", [deploy, sts])
def test_image_and_pull_policy(workload: Any) -> None:
    c = container(workload())
    assert c["image"] == "ghcr.io/fedkube/fedkube:0.1.0"
    assert "imagePullPolicy" not in c
    settings = b.OperatorSettings(default_image="reg/fk:dev", image_pull_policy="Always")
    c = container(workload(make_job(), settings))
    assert c["image"] == "reg/fk:dev" and c["imagePullPolicy"] == "Always"
    job = make_job(image="reg/custom:1", imagePullPolicy="Never")
    c = container(workload(job, settings))
    assert c["image"] == "reg/custom:1" and c["imagePullPolicy"] == "Never"


def test_resources_come_from_the_spec() -> None:
    rr = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    cr = {"requests": {"cpu": "1"}}
    job = make_job(reducer={"resources": rr}, combiners={"resources": cr})
    assert container(deploy(job))["resources"] == rr
    assert container(sts(job))["resources"] == cr
    assert container(deploy())["resources"] == {}


# ---------------------------------------------------------------- combiner StatefulSet


def test_combiner_statefulset_shape() -> None:
    s = sts()
    assert s["apiVersion"] == "apps/v1" and s["kind"] == "StatefulSet"
    assert s["metadata"]["name"] == "mnist-combiner"
    assert s["spec"]["replicas"] == 3
    assert s["spec"]["serviceName"] == "mnist-combiner"
    assert s["spec"]["podManagementPolicy"] == "Parallel"
    assert s["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    assert container(s)["name"] == "combiner"


def test_combiner_command_exactly() -> None:
    job = make_job(combiners={"port": 7171})
    assert container(sts(job, b.OperatorSettings(log_level="warning")))["command"] == [
        "fedkube",
        "combiner",
        "--job",
        "/etc/fedkube/job.yaml",
        "--name",
        "$(POD_NAME)",
        "--listen",
        "0.0.0.0:7171",
        "--metrics-port",
        "9090",
        "--workdir",
        "/var/lib/fedkube",
        "--log-level",
        "warning",
    ]


def test_combiner_env() -> None:
    c = container(sts())
    env = env_map(c)
    assert env == {
        "POD_NAME": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        REDUCER_TOKEN_ENV: secret_ref("mnist-tokens", "reducer-token"),
        "AWS_ACCESS_KEY_ID": secret_ref("s3", "AWS_ACCESS_KEY_ID"),
        "AWS_SECRET_ACCESS_KEY": secret_ref("s3", "AWS_SECRET_ACCESS_KEY"),
        "FEDKUBE_MONGODB_URI": secret_ref("mongo", "uri"),
    }
    assert CLIENT_TOKEN_ENV not in env  # clients' tokens are checked in the state store
    # $(POD_NAME) is expanded by Kubernetes only from a variable defined in env
    assert c["env"][0]["name"] == "POD_NAME"
    assert "$(POD_NAME)" in c["command"]


def test_combiner_port_and_tcp_probes() -> None:
    c = container(sts(make_job(combiners={"port": 7171})))
    assert c["ports"] == [
        {"name": "grpc", "containerPort": 7171, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
    ]
    assert c["livenessProbe"]["tcpSocket"] == {"port": 7171}
    assert c["readinessProbe"]["tcpSocket"] == {"port": 7171}
    assert c["readinessProbe"]["periodSeconds"] < c["livenessProbe"]["periodSeconds"]


@pytest.mark.parametrize("replicas", [1, 2, 256])
def test_combiner_replicas_follow_the_spec(replicas: int) -> None:
    job = make_job(combiners={"replicas": replicas})
    assert sts(job)["spec"]["replicas"] == replicas
    assert b.combiner_replicas(job) == replicas


def test_suspend_scales_combiners_to_zero_and_keeps_the_reducer() -> None:
    job = make_job(suspend=True)
    objs = children(job)
    assert by_kind(objs, "StatefulSet")["spec"]["replicas"] == 0
    assert by_kind(objs, "Deployment")["spec"]["replicas"] == 1
    # the pods that stay are not restarted by suspend/resume
    assert pod_hash(by_kind(objs, "Deployment")) == pod_hash(deploy())


# ---------------------------------------------------------------- Services


def test_reducer_service() -> None:
    svc = by_kind(children(), "Service", "mnist-reducer")
    assert svc["spec"] == {
        "type": "ClusterIP",
        "selector": names.selector("mnist", "reducer"),
        "ports": [{"name": "metrics", "port": 8080, "targetPort": 8080, "protocol": "TCP"}],
    }
    assert svc["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }


def test_headless_combiner_service() -> None:
    svc = by_kind(children(make_job(combiners={"port": 7171})), "Service", "mnist-combiner")
    assert svc["spec"] == {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": names.selector("mnist", "combiner"),
        "ports": [
            {"name": "grpc", "port": 7171, "targetPort": 7171, "protocol": "TCP"},
            {"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"},
        ],
    }
    assert svc["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9090",
        "prometheus.io/path": "/metrics",
    }


def test_pods_are_annotated_for_prometheus_on_their_metrics_port() -> None:
    for workload, port in ((deploy(), 8080), (sts(), 9090)):
        ann = workload["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
        assert ann["prometheus.io/path"] == "/metrics"
        assert ann["prometheus.io/port"] == str(port)
        named = {p["name"]: p["containerPort"] for p in container(workload)["ports"]}
        assert named["metrics"] == port


def test_combiner_metrics_port_moves_off_a_grpc_port_of_9090() -> None:
    job = make_job(combiners={"port": 9090})
    c = container(sts(job))
    assert [p["containerPort"] for p in c["ports"]] == [9090, 9091]
    argv = c["command"]
    assert argv[argv.index("--metrics-port") + 1] == "9091"
    svc = by_kind(children(job), "Service", "mnist-combiner")
    assert [p["port"] for p in svc["spec"]["ports"]] == [9090, 9091]
    assert svc["metadata"]["annotations"]["prometheus.io/port"] == "9091"


def test_the_clients_service_does_not_expose_metrics() -> None:
    # it may be a LoadBalancer reachable from outside: metrics stay inside the cluster
    svc = by_kind(children(), "Service", "mnist-clients")
    assert [p["name"] for p in svc["spec"]["ports"]] == ["grpc"]
    assert "prometheus.io/scrape" not in svc["metadata"].get("annotations", {})


def test_clients_service_defaults_to_cluster_ip() -> None:
    svc = by_kind(children(), "Service", "mnist-clients")
    assert svc["spec"] == {
        "type": "ClusterIP",
        "selector": names.selector("mnist", "combiner"),
        "ports": [{"name": "grpc", "port": 7070, "targetPort": 7070, "protocol": "TCP"}],
    }
    assert "annotations" not in svc["metadata"]


def test_clients_service_node_port() -> None:
    job = make_job(clients={"service": {"type": "NodePort", "nodePort": 30070}})
    svc = b.build_clients_service(job, NS, UID)
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"] == [
        {"name": "grpc", "port": 7070, "targetPort": 7070, "protocol": "TCP", "nodePort": 30070}
    ]
    # without a nodePort Kubernetes allocates one
    auto = b.build_clients_service(make_job(clients={"service": {"type": "NodePort"}}), NS, UID)
    assert "nodePort" not in auto["spec"]["ports"][0]


def test_clients_service_load_balancer_with_annotations() -> None:
    ann = {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}
    job = make_job(clients={"service": {"type": "LoadBalancer", "annotations": ann}})
    svc = b.build_clients_service(job, NS, UID)
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["metadata"]["annotations"] == ann
    assert svc["spec"]["selector"] == names.selector("mnist", "combiner")
    # the annotations go on the client Service only
    for obj in children(job):
        if obj["metadata"]["name"] != "mnist-clients":
            assert ann.keys().isdisjoint(obj["metadata"].get("annotations", {}))


def test_node_port_on_a_cluster_ip_service_is_a_build_error() -> None:
    job = make_job(clients={"service": {"nodePort": 30070}})
    with pytest.raises(b.BuildError, match=r"spec\.clients\.service\.nodePort"):
        children(job)


# ---------------------------------------------------------------- config hash


def test_config_hash_is_on_every_pod_and_on_the_config_map() -> None:
    objs = children()
    h = b.config_hash(make_job(), NS)
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert pod_hash(by_kind(objs, "StatefulSet")) == h
    assert pod_hash(by_kind(objs, "Deployment")) == h
    assert by_kind(objs, "ConfigMap")["metadata"]["annotations"][b.CONFIG_HASH_ANNOTATION] == h


def test_config_hash_is_stable_for_the_same_spec() -> None:
    assert b.config_hash(make_job(), NS) == b.config_hash(make_job(), NS)
    # metadata that changes without the job changing does not roll the pods
    noisy = make_job(
        metadata={
            "uid": UID,
            "resourceVersion": "1234",
            "generation": 7,
            "labels": {"x": "y"},
            "annotations": {"kopf.zalando.org/last-handled-configuration": "{...}"},
            "managedFields": [{"manager": "kubectl"}],
        }
    )
    same = make_job(metadata={"uid": UID})
    assert b.config_hash(noisy, NS) == b.config_hash(same, NS)
    assert (
        by_kind(children(noisy), "ConfigMap")["data"]
        == by_kind(children(same), "ConfigMap")["data"]
    )


def test_config_hash_depends_on_the_uid() -> None:
    """A job created again under its old name is another job (another job key)."""
    a, c = make_job(metadata={"uid": UID}), make_job(metadata={"uid": "ffff" + UID[4:]})
    assert a.key != c.key
    assert b.config_hash(a, NS) != b.config_hash(c, NS)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"train": {"config": {"epochs": 2}}},
        {"clients": {"perRound": 4}},
        {"aggregator": {"name": "median"}},
        {"serverOptimizer": {"name": "fedavgm"}},
        {"storage": {"s3": {"bucket": "other"}}},
        {"stateStore": {"mongodb": {"database": "other"}}},
        {"combiners": {"port": 7171}},
    ],
)
def test_config_hash_changes_when_the_spec_changes(change: dict[str, Any]) -> None:
    assert b.config_hash(make_job(**change), NS) != b.config_hash(make_job(), NS)
    assert pod_hash(deploy(make_job(**change))) != pod_hash(deploy())


@pytest.mark.parametrize(
    "change",
    [
        {"combiners": {"replicas": 7}},  # kubectl scale: the reducer follows the job record
        {"suspend": True},  # the reducer pauses through the job record
        {"ttlSecondsAfterFinished": 60},
        {"clients": {"service": {"type": "LoadBalancer"}}},
        {"combiners": {"resources": {"limits": {"cpu": "1"}}}},
        {"image": "reg/other:2"},
        {"rounds": 9},  # the reducer reads spec.rounds from the job record before each round
        {"clients": {"template": {"replicas": 5}}},  # only the client pods roll
    ],
)
def test_config_hash_ignores_fields_the_pods_follow_live_or_never_read(
    change: dict[str, Any],
) -> None:
    assert b.config_hash(make_job(**change), NS) == b.config_hash(make_job(), NS)
    # ... while the ConfigMap still shows the current spec
    cm = b.build_config_map(make_job(**change), NS, UID)
    assert (
        yaml.safe_load(cm["data"]["job.yaml"])["spec"] == make_job(**change).to_manifest()["spec"]
    )


def test_config_hash_depends_on_the_namespace() -> None:
    assert b.config_hash(make_job(), "a") != b.config_hash(make_job(), "b")


# ---------------------------------------------------------------- build errors


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"storage": {"local": {}}},
            "spec.storage.s3 is required on Kubernetes (pods share no local directory)",
        ),
        (
            {"stateStore": {"sqlite": {}}},
            "spec.stateStore.mongodb is required on Kubernetes (pods share no local directory)",
        ),
        ({"storage": {"s3": {"credentialsSecret": None}}}, "spec.storage.s3.credentialsSecret"),
        ({"stateStore": {"mongodb": {"uriSecret": None}}}, "spec.stateStore.mongodb.uriSecret"),
    ],
)
def test_build_error_names_the_missing_field(spec: dict[str, Any], message: str) -> None:
    manifest = {"metadata": {"name": "mnist"}, "spec": copy.deepcopy(BASE_SPEC)}
    for key, value in spec.items():
        manifest["spec"][key] = value
        if key == "storage" and "s3" in value:
            manifest["spec"][key] = {"s3": {**BASE_SPEC["storage"]["s3"], **value["s3"]}}
        if key == "stateStore" and "mongodb" in value:
            manifest["spec"][key] = {
                "mongodb": {**BASE_SPEC["stateStore"]["mongodb"], **value["mongodb"]}
            }
    job = parse_job(manifest)
    for build in (
        lambda: children(job),
        lambda: deploy(job),
        lambda: sts(job),
        lambda: b.check_runnable(job),
    ):
        with pytest.raises(b.BuildError) as exc:
            build()
        assert message in str(exc.value)
        assert isinstance(exc.value, ValueError)


def test_no_storage_at_all_is_a_build_error() -> None:
    job = parse_job({"metadata": {"name": "mnist"}, "spec": {"rounds": 1}})
    with pytest.raises(b.BuildError, match=r"^spec\.storage\.s3 is required on Kubernetes"):
        children(job)


def test_missing_uid_or_namespace_is_a_build_error() -> None:
    with pytest.raises(b.BuildError, match="uid"):
        b.build_config_map(make_job(), NS, "")
    with pytest.raises(b.BuildError, match="namespace"):
        b.build_config_map(make_job(), "", UID)


def test_operator_settings_defaults() -> None:
    s = b.OperatorSettings()
    assert (s.default_image, s.log_level, s.image_pull_policy) == (
        "ghcr.io/fedkube/fedkube:0.1.0",
        "info",
        None,
    )
    field = "log_level"
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(s, field, "debug")
