"""The FederatedJob CRD: generated from fedkube.spec, structural, and never stale.

- the committed chart CRD is exactly what scripts/gen_crd.py renders, and
  `gen_crd.py --check` catches a tampered or missing file;
- drift: an independent walk over the pydantic models of fedkube.spec and the
  CRD schema finds the same fields (camelCase), types, bounds, enums, required
  fields and defaults (manifest form), including the flattened unions;
- the schema obeys the structural-schema rules of the Kubernetes docs (a small
  checker, itself tested on broken schemas), every CEL rule has a message and
  names only fields that exist, printer columns and subresources point at
  fields that exist;
- examples/mnist/federatedjob.yaml parses with fedkube.spec and validates
  against the schema (after apiserver-style defaulting), and what the apiserver
  stores after defaulting parses back to the same job.

The real kube-apiserver tests (CEL evaluation, rejection messages) live with
the operator's Kubernetes tests.
"""

from __future__ import annotations

import copy
import enum
import inspect
import re
import subprocess
import sys
import typing
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union

import annotated_types as at
import pytest
import yaml
from pydantic import AwareDatetime, BaseModel, Field, TypeAdapter
from pydantic.fields import FieldInfo

from fedkube import spec
from fedkube.errors import SpecError
from fedkube.operator import crd
from fedkube.operator.status import CombinersStatus, Condition, JobStatus, headline_metric
from fedkube.vocabulary import Phase

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gen_crd.py"
CRD_FILE = REPO / "charts" / "fedkube" / "crds" / "federatedjobs.fedkube.dev.yaml"
EXAMPLE = REPO / "examples" / "mnist" / "federatedjob.yaml"
EXAMPLE_LOCAL = REPO / "examples" / "mnist" / "job.yaml"

Schema = dict[str, Any]


def _version() -> Schema:
    versions = crd.build_crd()["spec"]["versions"]
    assert len(versions) == 1
    return versions[0]


VERSION = _version()
ROOT = VERSION["schema"]["openAPIV3Schema"]
SPEC = ROOT["properties"]["spec"]
STATUS = ROOT["properties"]["status"]


# --------------------------------------------------------------------------
# Helpers: apiserver-style defaulting and a small schema validator.


def k8s_default(value: Any, node: Schema) -> Any:
    """Defaulting as kube-apiserver does it: prune non-nullable nulls, fill defaults, recurse."""
    value = copy.deepcopy(value)

    def walk(v: Any, n: Schema) -> None:
        if isinstance(v, dict):
            props: Schema = n.get("properties", {})
            for key in [
                k for k, x in v.items() if x is None and not props.get(k, {}).get("nullable")
            ]:
                del v[key]
            for key, prop in props.items():
                if key not in v and "default" in prop:
                    v[key] = copy.deepcopy(prop["default"])
            for key, x in v.items():
                if key in props:
                    walk(x, props[key])
                elif isinstance(n.get("additionalProperties"), dict):
                    walk(x, n["additionalProperties"])
        elif isinstance(v, list) and isinstance(n.get("items"), dict):
            for x in v:
                walk(x, n["items"])

    walk(value, node)
    return value


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _has_type(value: Any, t: str) -> bool:
    return isinstance(value, _PY_TYPES[t]) and (t == "boolean" or not isinstance(value, bool))


def validate(value: Any, node: Schema, path: str = "") -> list[str]:
    """OpenAPI checks the apiserver makes before CEL (types, enums, bounds, required, unknown)."""
    errors: list[str] = []
    t = node.get("type")
    if t is None:
        return errors  # preserve-unknown-fields / int-or-string nodes
    if not _has_type(value, t):
        return [f"{path}: must be of type {t}, got {type(value).__name__}"]
    if "enum" in node and value not in node["enum"]:
        errors.append(f"{path}: unsupported value {value!r}")
    if "pattern" in node and not re.search(node["pattern"], value):
        errors.append(f"{path}: {value!r} does not match {node['pattern']}")
    if "maxLength" in node and len(value) > node["maxLength"]:
        errors.append(f"{path}: longer than {node['maxLength']}")
    if "maxItems" in node and len(value) > node["maxItems"]:
        errors.append(f"{path}: more than {node['maxItems']} items")
    if "maxProperties" in node and len(value) > node["maxProperties"]:
        errors.append(f"{path}: more than {node['maxProperties']} properties")
    if "minimum" in node and (
        value <= node["minimum"] if node.get("exclusiveMinimum") else value < node["minimum"]
    ):
        errors.append(f"{path}: {value} is below the minimum {node['minimum']}")
    if "maximum" in node and (
        value >= node["maximum"] if node.get("exclusiveMaximum") else value > node["maximum"]
    ):
        errors.append(f"{path}: {value} is above the maximum {node['maximum']}")
    if t == "object":
        props: Schema = node.get("properties", {})
        errors += [f"{path}.{r}: required" for r in node.get("required", []) if r not in value]
        for key, sub in value.items():
            if path == "" and key == "metadata":
                continue  # ObjectMeta: validated by the apiserver itself
            if key in props:
                errors += validate(sub, props[key], f"{path}.{key}")
            elif isinstance(node.get("additionalProperties"), dict):
                errors += validate(sub, node["additionalProperties"], f"{path}.{key}")
            elif not node.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{key}: unknown field")
    if t == "array":
        for i, item in enumerate(value):
            errors += validate(item, node["items"], f"{path}[{i}]")
    return errors


def apiserver_view(doc: dict[str, Any]) -> dict[str, Any]:
    """What the apiserver would store for doc (defaulted), asserting it validates."""
    stored = k8s_default(doc, ROOT)
    stored["metadata"] = doc["metadata"]  # metadata is not ours to default
    errors = validate(stored, ROOT)
    assert not errors, errors
    return stored


# --------------------------------------------------------------------------
# The committed file and gen_crd.py.


def test_committed_crd_is_fresh() -> None:
    text = CRD_FILE.read_text()
    assert text == crd.render_crd_yaml()
    assert text.startswith("# generated by scripts/gen_crd.py from fedkube/spec.py; do not edit\n")
    assert yaml.safe_load(text) == crd.build_crd()


def test_gen_crd_check_passes_on_the_repo() -> None:
    proc = subprocess.run(
        [sys.executable, "-P", str(SCRIPT), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout


GenCrd = Callable[..., subprocess.CompletedProcess[str]]
#: where the fixture's copy of the chart's CRD lives, under tmp_path
COPY = Path("charts/fedkube/crds/federatedjobs.fedkube.dev.yaml")


@pytest.fixture
def gen_crd(tmp_path: Path) -> GenCrd:
    """Runs gen_crd.py (with the given arguments) on a copy of the chart's CRD
    (``--output tmp_path/COPY``)."""
    target = tmp_path / COPY
    target.parent.mkdir(parents=True)
    target.write_text(CRD_FILE.read_text())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-P", str(SCRIPT), "--output", str(target), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    return run


def test_check_passes_on_an_unchanged_copy(gen_crd: GenCrd) -> None:
    proc = gen_crd("--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout


def test_check_fails_on_a_tampered_copy_and_writes_nothing(gen_crd: GenCrd, tmp_path: Path) -> None:
    target = tmp_path / COPY
    tampered = target.read_text().replace("maximum: 256", "maximum: 512")
    assert tampered != target.read_text()
    target.write_text(tampered)
    proc = gen_crd("--check")
    assert proc.returncode == 1
    assert "stale generated CRD" in proc.stdout and str(target) in proc.stdout
    assert target.read_text() == tampered  # --check writes nothing
    assert gen_crd().returncode == 0  # regenerating fixes it
    assert gen_crd("--check").returncode == 0


def test_check_fails_when_the_file_is_missing(gen_crd: GenCrd, tmp_path: Path) -> None:
    (tmp_path / COPY).unlink()
    assert gen_crd("--check").returncode == 1


def test_output_argument_writes_and_checks_another_path(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "crd.yaml"
    run = [sys.executable, "-P", str(SCRIPT), "--output", str(out)]
    assert subprocess.run(run, capture_output=True, timeout=120).returncode == 0
    assert out.read_text() == CRD_FILE.read_text()
    out.write_text(out.read_text() + "# hand edit\n")
    proc = subprocess.run([*run, "--check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "stale" in proc.stdout


# --------------------------------------------------------------------------
# Drift: an independent walk of the pydantic models against the schema.

_DECIMAL_MARKERS = typing.get_args(spec.Decimal)[1:]


def _unwrap(tp: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    meta = list(metadata)
    while True:
        if typing.get_origin(tp) is Annotated:
            meta += list(tp.__metadata__)
            tp = tp.__origin__
        elif typing.get_origin(tp) in (Union, UnionType) and type(None) in typing.get_args(tp):
            (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
        else:
            break
    flat: list[Any] = []
    for m in meta:
        flat += m.metadata if isinstance(m, FieldInfo) else [m]
    return tp, flat


def _alias(name: str, field: FieldInfo) -> str:
    alias = field.validation_alias
    assert alias is None or isinstance(alias, str)
    return alias or name


def _annotated(field: FieldInfo) -> Any:
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


def _manifest(value: Any, annotation: Any) -> Any:
    return TypeAdapter(annotation).dump_python(value, mode="json", by_alias=True, exclude_none=True)


_LENGTH_KEYS = {
    "string": ("minLength", "maxLength"),
    "array": ("minItems", "maxItems"),
    "object": ("minProperties", "maxProperties"),
}


def _expected_lengths(meta: list[Any], t: str) -> dict[str, Any]:
    low, high = _LENGTH_KEYS[t]
    out: dict[str, Any] = {}
    for m in meta:
        if isinstance(m, at.MinLen):
            out[low] = m.min_length
        elif isinstance(m, at.MaxLen):
            out[high] = m.max_length
    return out


def _expected_bounds(meta: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in meta:
        if isinstance(m, at.Ge):
            out["minimum"] = m.ge
        elif isinstance(m, at.Gt):
            out |= {"minimum": m.gt, "exclusiveMinimum": True}
        elif isinstance(m, at.Le):
            out["maximum"] = m.le
        elif isinstance(m, at.Lt):
            out |= {"maximum": m.lt, "exclusiveMaximum": True}
    return out


class Drift:
    """Walks a pydantic model and its schema node side by side, collecting problems."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.seen: set[type[BaseModel]] = set()

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(message)

    def model(self, model: type[BaseModel], node: Schema, path: str) -> None:
        self.seen.add(model)
        self.check(node.get("type") == "object", f"{path}: not an object")
        props: Schema = node.get("properties", {})
        fields = {_alias(n, f): f for n, f in model.model_fields.items()}
        self.check(
            set(fields) == set(props),
            f"{path}: pydantic has {sorted(set(fields) - set(props))} that the CRD lacks, "
            f"the CRD has {sorted(set(props) - set(fields))} that pydantic lacks",
        )
        required = {a for a, f in fields.items() if f.is_required()}
        self.check(
            required == set(node.get("required", [])),
            f"{path}: required {sorted(required)} != CRD {node.get('required', [])}",
        )
        for alias, field in fields.items():
            if alias in props:
                self.field(field, props[alias], f"{path}.{alias}")

    def field(self, field: FieldInfo, node: Schema, path: str) -> None:
        if field.discriminator is not None:
            self.union(field, node, path)
        else:
            tp, meta = _unwrap(field.annotation, field.metadata)
            self.type(tp, meta, node, path)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if default is None:
            self.check("default" not in node, f"{path}: CRD default but pydantic has none")
            return
        expected = _manifest(default, _annotated(field))
        self.check("default" in node, f"{path}: pydantic default {expected!r} missing in the CRD")
        if "default" in node:
            got = k8s_default(node["default"], node)  # nested defaults fill `default: {}`
            self.check(got == expected, f"{path}: CRD default {got!r} != pydantic {expected!r}")

    def lengths(self, meta: list[Any], node: Schema, t: str, path: str) -> None:
        got = {k: node[k] for k in _LENGTH_KEYS[t] if k in node}
        want = _expected_lengths(meta, t)
        self.check(got == want, f"{path}: lengths {got} != pydantic {want}")

    def type(self, tp: Any, meta: list[Any], node: Schema, path: str) -> None:
        t = node.get("type")
        if all(any(m is k for m in meta) for k in _DECIMAL_MARKERS):
            self.check(t == "string" and "pattern" in node, f"{path}: Decimal must be a string")
            rules = " && ".join(r["rule"] for r in node.get("x-kubernetes-validations", []))
            ops = {at.Ge: (">=", "ge"), at.Gt: (">", "gt"), at.Le: ("<=", "le"), at.Lt: ("<", "lt")}
            for m in meta:
                for kind, (op, attr) in ops.items():
                    if isinstance(m, kind):
                        bound = f"double(self) {op} {float(getattr(m, attr))!r}"
                        self.check(bound in rules, f"{path}: no CEL bound `{bound}`")
        elif tp is bool:
            self.check(t == "boolean", f"{path}: bool is {t}")
        elif tp is int or tp is float:
            self.check(t == ("integer" if tp is int else "number"), f"{path}: {tp} is {t}")
            keys = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
            got = {k: node[k] for k in keys if k in node}
            self.check(got == _expected_bounds(meta), f"{path}: bounds {got} != {meta}")
        elif tp is str:
            self.check(t == "string", f"{path}: str is {t}")
            self.lengths(meta, node, "string", path)
        elif tp is AwareDatetime or (isinstance(tp, type) and issubclass(tp, datetime)):
            self.check(t == "string" and node.get("format") == "date-time", f"{path}: datetime")
        elif typing.get_origin(tp) is Literal:
            values = list(typing.get_args(tp))
            self.check(node.get("enum") == values, f"{path}: enum {node.get('enum')} != {values}")
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            values = [m.value for m in tp]
            self.check(t == "string", f"{path}: enum {tp.__name__} is {t}")
            self.check(node.get("enum") == values, f"{path}: enum {node.get('enum')} != {values}")
        elif typing.get_origin(tp) is list:
            self.check(t == "array", f"{path}: list is {t}")
            self.lengths(meta, node, "array", path)
            (item,) = typing.get_args(tp)
            self.type(*_unwrap(item, []), node.get("items", {}), f"{path}[]")
        elif typing.get_origin(tp) is dict:
            self.check(t == "object", f"{path}: dict is {t}")
            self.lengths(meta, node, "object", path)
            _, value = typing.get_args(tp)
            if value is Any:
                self.check(
                    node.get("x-kubernetes-preserve-unknown-fields") is True,
                    f"{path}: free-form dict must preserve unknown fields",
                )
            else:
                self.type(*_unwrap(value, []), node.get("additionalProperties", {}), f"{path}.*")
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            self.model(tp, node, path)
        else:
            self.problems.append(f"{path}: the test does not know {tp!r}")

    def union(self, field: FieldInfo, node: Schema, path: str) -> None:
        tag = field.discriminator
        assert isinstance(tag, str)
        variants: tuple[type[BaseModel], ...] = typing.get_args(_unwrap(field.annotation, [])[0])
        self.seen.update(variants)
        props: Schema = node.get("properties", {})
        tags = [typing.get_args(v.model_fields[tag].annotation)[0] for v in variants]
        self.check(props.get(tag, {}).get("enum") == tags, f"{path}.{tag}: enum != {tags}")
        default = _manifest(field.get_default(call_default_factory=True), _annotated(field))
        self.check(props.get(tag, {}).get("default") == default[tag], f"{path}.{tag}: default")
        self.check("required" not in node, f"{path}: a flattened union requires nothing")
        takers: dict[str, list[str]] = {}
        for variant, tag_value in zip(variants, tags, strict=True):
            for name, f in variant.model_fields.items():
                if name == tag:
                    continue
                alias = _alias(name, f)
                takers.setdefault(alias, []).append(tag_value)
                sub = props.get(alias)
                if sub is None:
                    self.problems.append(f"{path}.{alias} ({tag_value}) missing in the CRD")
                    continue
                self.type(*_unwrap(f.annotation, f.metadata), sub, f"{path}.{alias}")
                self.check("default" not in sub, f"{path}.{alias}: defaults differ per variant")
        self.check(
            set(props) == {tag, *takers}, f"{path}: {sorted(props)} != {sorted({tag, *takers})}"
        )
        rules = {r.get("fieldPath"): r for r in node.get("x-kubernetes-validations", [])}
        for alias, valid in takers.items():
            rule = rules.get(f".{alias}")
            if rule is None:
                self.problems.append(f"{path}.{alias}: no rule limiting it to {valid}")
                continue
            allowed = re.findall(r"'([^']*)'", rule["rule"])
            self.check(sorted(allowed) == sorted(valid), f"{path}.{alias}: {allowed} != {valid}")
            self.check(
                f"{path}.{alias} is only valid when {path}.{tag}" in rule["message"],
                f"{path}.{alias}: message {rule['message']!r}",
            )


def _spec_models() -> set[type[BaseModel]]:
    return {
        c
        for n, c in inspect.getmembers(spec, inspect.isclass)
        if issubclass(c, BaseModel) and c.__module__ == spec.__name__ and not n.startswith("_")
    }


def test_spec_schema_matches_the_pydantic_models() -> None:
    drift = Drift()
    drift.model(spec.JobSpec, SPEC, "spec")
    assert not drift.problems, "\n".join(drift.problems)
    # Every public model of fedkube.spec is reached (Metadata and FederatedJob are the root).
    missing = _spec_models() - drift.seen - {spec.Metadata, spec.FederatedJob}
    assert not missing, f"models not in the CRD: {sorted(m.__name__ for m in missing)}"


def _drop(node: Schema, key: str) -> None:
    del node[key]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: _drop(s["properties"]["clients"]["properties"], "perRound"), "the CRD lacks"),
        (lambda s: s["properties"].update(extra={"type": "string"}), "pydantic lacks"),
        (lambda s: s["properties"]["seed"].update(default=1), "CRD default 1 != pydantic 0"),
        (lambda s: s["properties"]["suspend"].update(type="string"), "bool is string"),
        (lambda s: s["properties"]["rounds"].update(maximum=5), "bounds"),
        (lambda s: s["properties"]["rounds"].update(default=1), "pydantic has none"),
        (lambda s: s.update(required=[]), "required"),
        (lambda s: _drop(s["properties"]["model"], "default"), "missing in the CRD"),
        (
            lambda s: s["properties"]["clients"]["properties"]["service"]["properties"][
                "type"
            ].update(enum=["ClusterIP"]),
            "enum",
        ),
        (
            lambda s: s["properties"]["serverOptimizer"]["properties"]["name"]["enum"].pop(),
            "serverOptimizer.name: enum",
        ),
        (
            lambda s: s["properties"]["serverOptimizer"]["x-kubernetes-validations"].pop(1),
            "momentum: no rule",
        ),
        (
            lambda s: s["properties"]["aggregator"]["properties"]["trimRatio"][
                "x-kubernetes-validations"
            ].clear(),
            "no CEL bound",
        ),
        (lambda s: s["properties"]["train"]["properties"]["config"].clear(), "preserve unknown"),
        (
            lambda s: _drop(s["properties"]["train"]["properties"]["env"], "maxProperties"),
            "lengths",
        ),
        (
            lambda s: _drop(
                s["properties"]["train"]["properties"]["env"]["additionalProperties"], "maxLength"
            ),
            "train.env.*: lengths",
        ),
        (
            lambda s: s["properties"]["clients"]["properties"]["heartbeatSeconds"].update(
                minimum=0
            ),
            "heartbeatSeconds: bounds",
        ),
    ],
)
def test_drift_checker_catches_mutations(mutate: Any, expected: str) -> None:
    mutated = copy.deepcopy(SPEC)
    mutate(mutated)
    drift = Drift()
    drift.model(spec.JobSpec, mutated, "spec")
    assert any(expected in p for p in drift.problems), drift.problems


def test_status_schema_matches_the_status_model() -> None:
    drift = Drift()
    drift.model(JobStatus, STATUS, "status")
    assert not drift.problems, "\n".join(drift.problems)
    # the phase enum (fedkube.vocabulary.Phase) is checked too
    mutated = copy.deepcopy(STATUS)
    mutated["properties"]["phase"]["enum"].pop()
    drift = Drift()
    drift.model(JobStatus, mutated, "status")
    assert any("status.phase: enum" in p for p in drift.problems), drift.problems


def test_root_fields() -> None:
    assert set(ROOT["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert {_alias(n, f) for n, f in spec.FederatedJob.model_fields.items()} == set(
        ROOT["properties"]
    )
    assert ROOT["required"] == ["spec"]
    assert ROOT["properties"]["metadata"] == {"type": "object"}


def test_defaulting_an_empty_spec_gives_the_pydantic_defaults() -> None:
    """What the apiserver stores for {rounds: 3} is exactly pydantic's manifest form."""
    stored = k8s_default({"rounds": 3}, SPEC)
    expected = spec.JobSpec(rounds=3).model_dump(mode="json", by_alias=True, exclude_none=True)
    assert stored == expected
    assert crd.apply_defaults({"rounds": 3}, SPEC) == expected


@pytest.mark.parametrize(
    ("union", "variants"),
    [
        ("aggregator", spec.FedAvgAggregator | spec.MedianAggregator | spec.TrimmedMeanAggregator),
        (
            "serverOptimizer",
            spec.FedAvgOptimizer
            | spec.FedAvgMOptimizer
            | spec.FedAdamOptimizer
            | spec.FedYogiOptimizer
            | spec.FedAdagradOptimizer,
        ),
    ],
)
def test_flattened_union_has_every_variant_and_parameter(union: str, variants: Any) -> None:
    node = SPEC["properties"][union]
    assert node["properties"]["name"]["default"] == "fedavg"
    for variant in typing.get_args(variants):
        (tag,) = typing.get_args(variant.model_fields["name"].annotation)
        assert tag in node["properties"]["name"]["enum"]
        for name, f in variant.model_fields.items():
            alias = _alias(name, f)
            assert alias in node["properties"], f"{union}.{alias} of {tag}"
            if name != "name":
                desc = node["properties"][alias]["description"]
                assert tag in desc, f"{union}.{alias}: description should name {tag}"
        # Every variant's own manifest form validates against the flattened object.
        instance = variant(name=tag)
        assert not validate(_manifest(instance, variant), node, f"spec.{union}")
    assert "oneOf" not in node and "anyOf" not in node


def test_every_model_validator_has_cel_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    with_validators = {m for m in _spec_models() if m.__pydantic_decorators__.model_validators} - {
        spec.Metadata
    }
    assert with_validators == set(crd._MODEL_RULES)
    # build_crd refuses to drop a validator silently.
    rules = dict(crd._MODEL_RULES)
    del rules[spec.ClientsSpec]
    monkeypatch.setattr(crd, "_MODEL_RULES", rules)
    with pytest.raises(TypeError, match="ClientsSpec has a model validator"):
        crd.build_crd()


def test_unknown_constraints_and_types_fail_loudly() -> None:
    class Odd(BaseModel):
        even: int = Field(default=2, multiple_of=2)

    with pytest.raises(TypeError, match="does not know the constraint"):
        crd._object_schema(Odd, "spec.odd")

    class Mixed(BaseModel):
        either: int | str = 1

    with pytest.raises(TypeError, match="cannot express"):
        crd._object_schema(Mixed, "spec.mixed")

    class Level(enum.IntEnum):
        LOW = 1

    class Numbered(BaseModel):
        level: Level = Level.LOW

    with pytest.raises(TypeError, match="only string Enums"):
        crd._object_schema(Numbered, "spec.numbered")


def _rules_at(path: str) -> list[Schema]:
    node = ROOT
    for part in path.split("."):
        node = node["properties"][part]
    rules: list[Schema] = node.get("x-kubernetes-validations", [])
    return rules


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("spec.clients", "spec.clients.minUpdates must be <= spec.clients.perRound"),
        ("spec.storage", "spec.storage.local and spec.storage.s3 are mutually exclusive"),
        (
            "spec.stateStore",
            "spec.stateStore.sqlite and spec.stateStore.mongodb are mutually exclusive",
        ),
        (
            "spec.model",
            "set at most one of spec.model.seedUri, spec.model.initCommand, spec.model.initFn",
        ),
    ],
)
def test_cross_field_rules(path: str, message: str) -> None:
    assert any(message in r["message"] for r in _rules_at(path)), _rules_at(path)


def test_name_rules_at_the_root() -> None:
    rules = {r["rule"]: r["message"] for r in ROOT["x-kubernetes-validations"]}
    length = f"self.metadata.name.size() <= {spec.MAX_NAME_LENGTH}"
    assert length in rules
    assert "leaving room for child object names" in rules[length]
    assert any("matches(" in r and "DNS-1035" in m for r, m in rules.items())


def test_decimal_pattern_agrees_with_the_spec() -> None:
    good = ["0.1", "1", "1.", ".5", "1e-05", "2.5E+3", "-0.0", repr(1e-3), repr(0.99)]
    bad = ["", "abc", "nan", "inf", "1_000", "0x10", "1e", " 0.1", "0.1 "]
    for text in good:
        assert re.search(crd.DECIMAL_PATTERN, text), text
        assert TypeAdapter(spec.Decimal).validate_python(text) == float(text)
    for text in bad:
        assert not re.search(crd.DECIMAL_PATTERN, text), text


# --------------------------------------------------------------------------
# Structural schema rules (kubernetes.io: "Specifying a structural schema").

_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
_JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
_FORBIDDEN = {"$ref", "definitions", "dependencies", "patternProperties", "additionalItems"}
_FORBIDDEN |= {"id", "$schema", "const", "discriminator"}
_NOT_IN_JUNCTORS = {"description", "type", "default", "additionalProperties", "nullable"}
_ALLOWED = {
    "description", "type", "format", "title", "enum", "pattern", "minLength", "maxLength",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems",
    "maxItems", "uniqueItems", "minProperties", "maxProperties", "required", "properties",
    "additionalProperties", "items", "default", "nullable", "example", "externalDocs",
    *_JUNCTORS, "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type", "x-kubernetes-validations",
}  # fmt: skip
_REASONS = {"FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"}


def _children(node: Schema, path: str) -> Iterator[tuple[Schema, str]]:
    for name, sub in node.get("properties", {}).items():
        yield sub, f"{path}.{name}"
    if isinstance(node.get("additionalProperties"), dict):
        yield node["additionalProperties"], f"{path}.*"
    if isinstance(node.get("items"), dict):
        yield node["items"], f"{path}[]"


def _junctor_fields(node: Schema) -> Iterator[tuple[str, Schema]]:
    """(path, schema) of every field or item specified inside the logical junctors."""
    for key in _JUNCTORS:
        subs = node.get(key)
        for sub in [subs] if isinstance(subs, dict) else subs or []:
            yield from ((f"{key}:{n}", s) for n, s in sub.get("properties", {}).items())
            if "items" in sub:
                yield f"{key}:[]", sub["items"]
            yield from _junctor_fields(sub)


def _check_junctor_content(node: Schema, path: str, problems: list[str]) -> None:
    for key in _JUNCTORS:
        subs = node.get(key)
        for sub in [subs] if isinstance(subs, dict) else subs or []:
            bad = _NOT_IN_JUNCTORS & set(sub)
            if bad and not node.get("x-kubernetes-int-or-string"):
                problems.append(f"{path}: {key} sets {sorted(bad)}")
            for child, child_path in _children(sub, f"{path}/{key}"):
                _check_junctor_content(child, child_path, problems)
            _check_junctor_content(sub, f"{path}/{key}", problems)


def _rule_fields(rule: str) -> set[str]:
    return set(re.findall(r"(?:has\()?self\.([A-Za-z_][A-Za-z0-9_]*)", rule))


def structural_problems(node: Schema, path: str = "", *, root: bool = True) -> list[str]:
    """Every violation of the structural-schema rules (and of our own CEL hygiene)."""
    problems: list[str] = []
    if root:
        if node.get("type") != "object":
            problems.append("root: type must be object")
        meta = node.get("properties", {}).get("metadata")
        if meta is not None:
            extra = set(meta) - {"type", "properties"}
            names = set(meta.get("properties", {})) - {"name", "generateName"}
            if extra or names or meta.get("type") != "object":
                problems.append("metadata: only name and generateName may be restricted")
    for key in set(node) - _ALLOWED:
        problems.append(f"{path or 'root'}: keyword {key} not allowed in a CRD schema")
    for key in _FORBIDDEN & set(node):
        problems.append(f"{path or 'root'}: {key} is forbidden")
    if node.get("uniqueItems") is True:
        problems.append(f"{path}: uniqueItems: true is forbidden")
    if "x-kubernetes-preserve-unknown-fields" in node and (
        node["x-kubernetes-preserve-unknown-fields"] is not True
    ):
        problems.append(f"{path}: x-kubernetes-preserve-unknown-fields must be true")
    untyped_ok = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
        "x-kubernetes-int-or-string"
    )
    t = node.get("type")
    if t is None and not untyped_ok:
        problems.append(f"{path or 'root'}: no type")
    if t is not None and t not in _TYPES:
        problems.append(f"{path}: unknown type {t}")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties are mutually exclusive")
    if ("properties" in node or "additionalProperties" in node) and t not in (None, "object"):
        problems.append(f"{path}: properties on a {t}")
    if t == "array" and not isinstance(node.get("items"), dict):
        problems.append(f"{path}: an array needs one items schema")
    for r in node.get("required", []):
        if r not in node.get("properties", {}):
            problems.append(f"{path}: required {r} is not a property")
    if "enum" in node and t in _PY_TYPES and not all(_has_type(v, t) for v in node["enum"]):
        problems.append(f"{path}: enum values are not all {t}")
    _check_junctor_content(node, path, problems)
    outside = {name for name in node.get("properties", {})}
    for jpath, _ in _junctor_fields(node):
        name = jpath.split(":", 1)[1]
        if name != "[]" and name not in outside:
            problems.append(f"{path}: {jpath} is specified only inside a junctor")
        if name == "[]" and "items" not in node:
            problems.append(f"{path}: {jpath} items specified only inside a junctor")
    if "default" in node:
        if root:
            problems.append("root: no default allowed")
        else:
            defaulted = k8s_default(node["default"], node)
            errs = validate(defaulted, node, path)
            problems += [f"{path}: default does not validate: {e}" for e in errs]
    if node.get("x-kubernetes-list-type") == "map":
        items = node.get("items", {})
        for key in node.get("x-kubernetes-list-map-keys", []):
            sub = items.get("properties", {}).get(key)
            if sub is None or sub.get("type") not in ("string", "integer", "boolean"):
                problems.append(f"{path}: map key {key} must be a scalar property of the items")
            elif key not in items.get("required", []) and "default" not in sub:
                problems.append(f"{path}: map key {key} must be required or defaulted")
    for rule in node.get("x-kubernetes-validations", []):
        where = f"{path or 'root'}: rule {rule.get('rule')!r}"
        if not rule.get("rule") or not rule.get("message"):
            problems.append(f"{where} needs a rule and a message")
        if set(rule) - {"rule", "message", "fieldPath", "reason"}:
            problems.append(f"{where}: unexpected keys {sorted(rule)}")
        if "reason" in rule and rule["reason"] not in _REASONS:
            problems.append(f"{where}: reason {rule['reason']}")
        if "fieldPath" in rule:
            sub = node
            for part in rule["fieldPath"].split(".")[1:]:
                sub = sub.get("properties", {}).get(part, {})
            if not sub:
                problems.append(f"{where}: fieldPath {rule['fieldPath']} is not in the schema")
        known = set(node.get("properties", {}))
        unknown = _rule_fields(rule.get("rule", "")) - known
        if unknown and t == "object":
            problems.append(f"{where} names unknown fields {sorted(unknown)}")
    for child, child_path in _children(node, path):
        problems += structural_problems(child, child_path, root=False)
    return problems


def test_schema_is_structural() -> None:
    problems = structural_problems(ROOT)
    assert not problems, "\n".join(problems)


def _walk(node: Schema) -> Iterator[Schema]:
    yield node
    for child, _ in _children(node, ""):
        yield from _walk(child)


def test_schema_uses_no_junctors_and_every_property_is_described() -> None:
    for node in _walk(ROOT):
        assert not set(_JUNCTORS) & set(node)
    undescribed = [
        path
        for part in (SPEC, STATUS)
        for node, path in _described(part, "")
        if not node.get("description")
    ]
    assert not undescribed, f"add a Field(description=...) in fedkube/spec.py: {undescribed}"


def _described(node: Schema, path: str) -> Iterator[tuple[Schema, str]]:
    for name, sub in node.get("properties", {}).items():
        yield sub, f"{path}.{name}"
        yield from _described(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _described(node["items"], f"{path}[]")


_GOOD = {"type": "object", "properties": {"spec": {"type": "object"}}}


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ({"type": "object", "properties": {"a": {"description": "x"}}}, "no type"),
        (
            {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {}},
            "mutually exclusive",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "oneOf": [{"properties": {"b": {"type": "string"}}}],
            },
            "only inside a junctor",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "anyOf": [{"type": "object"}],
            },
            "anyOf sets ['type']",
        ),
        (
            {"type": "object", "properties": {"metadata": {"type": "object", "required": ["x"]}}},
            "only name and generateName",
        ),
        ({"type": "object", "properties": {"a": {"$ref": "#/x"}}}, "$ref"),
        ({"type": "object", "properties": {"a": {"type": "array"}}}, "one items schema"),
        ({"type": "object", "properties": {"a": {"type": "integer", "default": "x"}}}, "default"),
        ({"type": "object", "x-kubernetes-validations": [{"rule": "true"}]}, "needs a rule"),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "integer"}},
                "x-kubernetes-validations": [{"rule": "self.b > 0", "message": "m"}],
            },
            "unknown fields ['b']",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "integer"}},
                "x-kubernetes-validations": [{"rule": "true", "message": "m", "fieldPath": ".b"}],
            },
            "fieldPath .b",
        ),
        (
            {
                "type": "object",
                "properties": {
                    "l": {
                        "type": "array",
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["k"],
                        "items": {"type": "object", "properties": {"k": {"type": "string"}}},
                    }
                },
            },
            "must be required or defaulted",
        ),
        ({"type": "string"}, "root: type must be object"),
    ],
)
def test_structural_checker_catches_broken_schemas(broken: Schema, expected: str) -> None:
    assert not structural_problems(_GOOD)
    problems = structural_problems(broken)
    assert any(expected in p for p in problems), problems


# --------------------------------------------------------------------------
# Names, subresources, printer columns.


def test_names_and_version() -> None:
    c = crd.build_crd()
    assert c["apiVersion"] == "apiextensions.k8s.io/v1"
    assert c["kind"] == "CustomResourceDefinition"
    assert c["metadata"]["name"] == "federatedjobs.fedkube.dev"
    s = c["spec"]
    assert s["group"] == "fedkube.dev" and s["scope"] == "Namespaced"
    names = s["names"]
    assert names["kind"] == "FederatedJob" and names["listKind"] == "FederatedJobList"
    assert names["plural"] == "federatedjobs" and names["singular"] == "federatedjob"
    assert {"fj", "fedjob"} <= set(names["shortNames"])
    assert names["categories"] == ["fedkube"]
    assert f"{s['group']}/{VERSION['name']}" == spec.API_VERSION
    assert VERSION["served"] is True and VERSION["storage"] is True


def _schema_at(json_path: str) -> Schema:
    node = ROOT
    for part in json_path.split(".")[1:]:
        node = node["properties"][part]
    return node


def test_subresources() -> None:
    sub = VERSION["subresources"]
    assert sub["status"] == {}
    scale = sub["scale"]
    assert scale == {
        "specReplicasPath": ".spec.combiners.replicas",
        "statusReplicasPath": ".status.combiners.replicas",
        "labelSelectorPath": ".status.combiners.selector",
    }
    replicas = _schema_at(scale["specReplicasPath"])
    assert replicas["type"] == "integer" and replicas["default"] == 1
    assert SPEC["properties"]["combiners"]["default"] == {}  # so the path always exists
    assert _schema_at(scale["statusReplicasPath"])["type"] == "integer"
    assert _schema_at(scale["labelSelectorPath"])["type"] == "string"


def test_status_schema() -> None:
    props = STATUS["properties"]
    assert props["phase"]["enum"] == ["Pending", "Running", "Suspended", "Succeeded", "Failed"]
    assert [p.value for p in Phase] == props["phase"]["enum"]  # fedkube.vocabulary.Phase
    for key in (
        "observedGeneration", "currentRound", "completedRounds", "latestModel", "metrics",
        "combiners", "startTime", "completionTime", "message", "headlineMetric", "conditions",
    ):  # fmt: skip
        assert key in props
    conditions = props["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]["properties"]
    assert set(item) == {
        "type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"
    }  # fmt: skip
    assert item["lastTransitionTime"]["format"] == "date-time"
    assert props["startTime"]["format"] == props["completionTime"]["format"] == "date-time"
    assert props["metrics"]["additionalProperties"] == {"type": "number"}
    assert set(props["combiners"]["properties"]) == {"replicas", "ready", "selector"}
    assert "accuracy" in props["headlineMetric"]["description"]


def test_a_full_status_validates() -> None:
    status = JobStatus(
        observed_generation=2,
        phase="Running",
        conditions=[
            Condition(
                type="Ready",
                status="True",
                reason="RoundsRunning",
                message="round 3 of 10",
                last_transition_time=datetime.fromisoformat("2026-01-01T00:00:00+00:00"),
                observed_generation=2,
            )
        ],
        current_round=3,
        completed_rounds=2,
        latest_model="mnist/rounds/2/model.safetensors",
        metrics={"accuracy": 0.968, "loss": 0.11},
        headline_metric=headline_metric({"accuracy": 0.968, "loss": 0.11}),
        combiners=CombinersStatus(replicas=2, ready=2, selector="app=x"),
        start_time=datetime.fromisoformat("2026-01-01T00:00:00+00:00"),
    )
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert not validate(dumped, STATUS, "status")
    assert dumped["headlineMetric"] == "accuracy=0.968"


def test_printer_columns() -> None:
    columns = VERSION["additionalPrinterColumns"]
    main = [c["name"] for c in columns if not c.get("priority")]
    assert main == ["Phase", "Round", "Rounds", "Combiners", "Ready", "Metric", "Age"]
    kinds = {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean"}
    for column in columns:
        path = column["jsonPath"]
        if path == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        node = _schema_at(path)
        assert kinds[node["type"]] == column["type"], column
    by_name = {c["name"]: c["jsonPath"] for c in columns}
    assert by_name["Phase"] == ".status.phase"
    assert by_name["Round"] == ".status.currentRound"
    assert by_name["Rounds"] == ".spec.rounds"
    assert by_name["Combiners"] == ".spec.combiners.replicas"
    assert by_name["Ready"] == ".status.combiners.ready"
    assert by_name["Metric"] == ".status.headlineMetric"


# --------------------------------------------------------------------------
# Manifests: the Kubernetes example, and pydantic's manifest form in general.


def test_kubernetes_example_parses_and_matches_the_local_one() -> None:
    job = spec.load_job_file(EXAMPLE)
    local = spec.load_job_file(EXAMPLE_LOCAL)
    assert job.name == local.name == "mnist"
    s = job.spec
    assert s.rounds == local.spec.rounds
    assert s.train == local.spec.train
    assert s.model == local.spec.model
    assert s.combiners == local.spec.combiners
    ignore = {"simulation"}
    assert s.clients.model_dump(exclude=ignore) == local.spec.clients.model_dump(exclude=ignore)
    assert s.clients.simulation.clients == 0
    assert s.storage.local is None and s.storage.s3 is not None
    assert (s.storage.s3.endpoint, s.storage.s3.bucket) == ("fedkube-s3:8333", "fedkube")
    assert s.storage.s3.secure is False
    assert s.storage.s3.credentials_secret == "fedkube-s3-credentials"
    assert s.state_store.sqlite is None and s.state_store.mongodb is not None
    assert s.state_store.mongodb.uri_secret == "fedkube-mongodb"


def test_kubernetes_example_satisfies_the_crd() -> None:
    (doc,) = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    stored = apiserver_view(doc)
    name = doc["metadata"]["name"]
    assert len(name) <= spec.MAX_NAME_LENGTH and re.fullmatch(spec._NAME_RE, name)
    # The operator parses what the apiserver stores: the same job as the file.
    assert spec.parse_job(stored) == spec.load_job_file(EXAMPLE)


def _manifest_of(**job_spec: Any) -> dict[str, Any]:
    job = spec.parse_job(
        {
            "apiVersion": spec.API_VERSION,
            "kind": spec.KIND,
            "metadata": {"name": "rich"},
            "spec": job_spec,
        }
    )
    return job.to_manifest()


RICH_SPECS: list[dict[str, Any]] = [
    {"rounds": 1},
    {
        "rounds": 5,
        "suspend": True,
        "seed": 7,
        "image": "fedkube:dev",
        "imagePullPolicy": "IfNotPresent",
        "model": {"initCommand": ["python", "init.py"], "maxBytes": 1024},
        "train": {"command": ["python", "t.py"], "config": {"nested": {"a": [1, "b"]}}},
        "clients": {
            "perRound": 4,
            "minUpdates": 4,
            "roundTimeoutSeconds": 30,
            "waitTimeoutSeconds": 604800,
            "heartbeatSeconds": 1,
            "service": {"type": "NodePort", "nodePort": 30001, "annotations": {"a": "b"}},
        },
        "combiners": {"replicas": 3, "resources": {"limits": {"cpu": "1"}}},
        "aggregator": {"name": "trimmedmean", "trimRatio": "0.2"},
        "serverOptimizer": {"name": "fedadam", "learningRate": "1e-05", "tau": "0.01"},
        "validation": {"perRound": 2, "every": 3, "timeoutSeconds": 60},
        "retry": {"backoffSeconds": 0},
        "weights": {"maxExamples": 1000, "maxMedianMultiple": "3"},
        "storage": {"s3": {"endpoint": "s3:9000", "bucket": "b", "publicEndpoint": "x:1"}},
        "stateStore": {"mongodb": {"uriSecret": "m", "database": "d"}},
        "ttlSecondsAfterFinished": 60,
    },
    {"rounds": 2, "aggregator": {"name": "median"}, "serverOptimizer": {"name": "fedavgm"}},
    {"rounds": 2, "serverOptimizer": {"name": "fedyogi"}, "storage": {"local": {}}},
    {"rounds": 2, "model": {"seedUri": "seed.safetensors"}, "stateStore": {"sqlite": {}}},
]


@pytest.mark.parametrize("job_spec", RICH_SPECS)
def test_pydantic_manifests_satisfy_the_crd_and_round_trip(job_spec: dict[str, Any]) -> None:
    manifest = _manifest_of(**job_spec)
    stored = apiserver_view(manifest)
    assert spec.parse_job(stored) == spec.parse_job(manifest)


def test_decimals_must_be_strings_in_the_crd() -> None:
    """pydantic also takes a bare number for a Decimal; the CRD insists on the string form."""
    node = SPEC["properties"]["aggregator"]
    assert validate({"name": "trimmedmean", "trimRatio": "0.2"}, node) == []
    assert validate({"name": "trimmedmean", "trimRatio": 0.2}, node) == [
        ".trimRatio: must be of type string, got float"
    ]


@pytest.mark.parametrize(
    ("job_spec", "error"),
    [
        ({"rounds": 0}, ".spec.rounds: 0 is below the minimum"),
        ({}, ".spec.rounds: required"),
        ({"rounds": 1, "aggregator": {"name": "krum"}}, "unsupported value 'krum'"),
        ({"rounds": 1, "combiners": {"replicas": 257}}, "above the maximum"),
        (
            {"rounds": 1, "aggregator": {"name": "trimmedmean", "trimRatio": "abc"}},
            "does not match",
        ),
        ({"rounds": 1, "bogus": 1}, ".spec.bogus: unknown field"),
        ({"rounds": 1, "storage": {"s3": {"endpoint": "x"}}}, ".spec.storage.s3.bucket: required"),
        # issue 8: booleans and strings are not integers; seconds are bounded integers
        ({"rounds": True}, ".spec.rounds: must be of type integer, got bool"),
        ({"rounds": "3"}, ".spec.rounds: must be of type integer, got str"),
        ({"rounds": 1, "suspend": "true"}, ".spec.suspend: must be of type boolean"),
        (
            {"rounds": 1, "clients": {"roundTimeoutSeconds": 1e300}},
            ".spec.clients.roundTimeoutSeconds: must be of type integer, got float",
        ),
        (
            {"rounds": 1, "clients": {"roundTimeoutSeconds": 604801}},
            ".spec.clients.roundTimeoutSeconds: 604801 is above the maximum",
        ),
        (
            {"rounds": 1, "clients": {"heartbeatSeconds": 0}},
            ".spec.clients.heartbeatSeconds: 0 is below the minimum 1",
        ),
        (
            {"rounds": 1, "clients": {"heartbeatSeconds": 0.001}},
            ".spec.clients.heartbeatSeconds: must be of type integer",
        ),
        (
            {"rounds": 1, "validation": {"timeoutSeconds": 0}},
            ".spec.validation.timeoutSeconds: 0 is below the minimum",
        ),
        (
            {"rounds": 1, "retry": {"backoffSeconds": 3601}},
            ".spec.retry.backoffSeconds: 3601 is above the maximum",
        ),
        (
            {
                "rounds": 1,
                "train": {"env": {f"V{i}": "x" for i in range(spec.MAX_ENV_ENTRIES + 1)}},
            },
            ".spec.train.env: more than 256 properties",
        ),
        (
            {"rounds": 1, "train": {"env": {"V": "x" * (spec.MAX_ENV_VALUE_LENGTH + 1)}}},
            ".spec.train.env.V: longer than",
        ),
        ({"rounds": 1, "weights": {"maxExamples": 0}}, ".spec.weights.maxExamples: 0 is below"),
    ],
)
def test_schema_and_pydantic_both_reject(job_spec: dict[str, Any], error: str) -> None:
    doc = {
        "apiVersion": spec.API_VERSION,
        "kind": spec.KIND,
        "metadata": {"name": "bad"},
        "spec": job_spec,
    }
    errors = validate(k8s_default(doc, ROOT), ROOT)
    assert any(error in e for e in errors), errors
    with pytest.raises(SpecError):
        spec.parse_job(doc)
