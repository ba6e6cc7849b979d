"""kopf handlers: thin async glue between FederatedJobs and their children (I/O).

Everything that decides *what* to write lives in the pure modules beside this
one (builders.py: the children's manifests; status.py: the status block from
``status_from`` and the Events' reasons; names.py: child names and Secret keys;
crd.py: the resource's group, version and plural); this module only reads the
world, calls them and writes the result back: server-side apply of the
children, the job record in the state store (which the reducer follows for
replicas and suspend), the status block and Kubernetes Events.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

import kopf

from fedkube.errors import FedkubeError, SpecError
from fedkube.operator import names
from fedkube.operator.builders import (
    BuildError,
    OperatorSettings,
    build_children,
    check_runnable,
    client_ids,
    job_manifest,
    uses_default_storage,
    with_defaults,
)
from fedkube.operator.crd import GROUP, PLURAL, VERSION
from fedkube.operator.kube import Kube
from fedkube.operator.status import EventReason, parse_rfc3339, phase_event_reason, status_from
from fedkube.spec import API_VERSION, KIND, FederatedJob, parse_job
from fedkube.state import StateStore, open_state_store
from fedkube.vocabulary import TERMINAL_PHASES, Phase

SYNC_INTERVAL = 5.0


@dataclass
class Runtime:
    """Per-process operator state, kept in kopf's memo."""

    settings: OperatorSettings = field(default_factory=OperatorSettings)
    kubeconfig: str | None = None
    state_override: str | None = None  # one state store for every job (tests, single tenant)
    #: serving every namespace (--all-namespaces); else only --namespace ones
    clusterwide: bool = True
    kube: Kube | None = None
    stores: dict[str, StateStore] = field(default_factory=dict)


def _runtime(memo: Any) -> Runtime:
    rt = memo.get("fedkube")
    if rt is None:
        rt = memo["fedkube"] = Runtime()
    return rt


def configure(runtime: Runtime) -> None:
    """Set the process-wide runtime before kopf starts (called by `fedkube operator`)."""
    _DEFAULT_RUNTIME.__dict__.update(runtime.__dict__)


_DEFAULT_RUNTIME = Runtime()


def manifest_of(body: Any) -> dict[str, Any]:
    """The FederatedJob manifest of a kopf body, without server-managed metadata."""
    md = body.get("metadata", {})
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            "name": md.get("name"),
            "namespace": md.get("namespace"),
            "uid": md.get("uid"),
            "labels": dict(md.get("labels") or {}),
        },
        "spec": dict(body.get("spec") or {}),
    }


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: $KUBECONFIG (set from --kubeconfig)."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        return kopf.login_with_service_account(**kwargs)
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    rt = memo["fedkube"] = Runtime(**_DEFAULT_RUNTIME.__dict__)
    # Progress and diff-base in annotations: the status block stays ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="fedkube.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="fedkube.dev", key="last-handled-configuration"
    )
    settings.persistence.finalizer = "fedkube.dev/operator"
    # Long-running clusters: renew watches regularly, never hang on a dead socket.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 30
    settings.batching.error_delays = (1, 2, 5, 10, 30, 60)
    settings.posting.level = logging.INFO
    # Serving named namespaces, the operator has no right to list namespaces or CRDs
    # (namespaced RBAC): kopf would retry those lists for about a minute before it
    # serves anything, then warn. Scanning off: it serves the named namespaces at once.
    settings.scanning.disabled = not rt.clusterwide
    rt.kube = await Kube.connect(rt.kubeconfig)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    rt = _runtime(memo)
    if rt.kube is not None:
        await rt.kube.close()
    for st in rt.stores.values():
        st.close()


def _default_secret(rt: Runtime, job: FederatedJob, secret: str | None) -> tuple[str, str] | None:
    """(namespace, name) of the operator's own MongoDB Secret when `secret` is the job's
    copy of it (``<job>-storage``), which may not exist yet."""
    d, ns = rt.settings.storage, rt.settings.namespace
    if secret != names.storage_secret(job.name) or not ns or not d.mongodb_secret:
        return None
    return ns, d.mongodb_secret


async def _secret_value(rt: Runtime, where: tuple[str, str], key: str, field: str = "") -> str:
    """Key `key` of Secret `where` (namespace, name); BuildError naming it (and the spec
    `field` that named the Secret) when it is missing."""
    assert rt.kube is not None
    value = await rt.kube.secret_value(where[0], where[1], key)
    if not value:
        raise BuildError(
            f"Secret {where[0]}/{where[1]} has no key {key!r}" + (f" ({field})" if field else "")
        )
    return value


async def _storage_data(rt: Runtime, job: FederatedJob) -> dict[str, str] | None:
    """The values of Secret ``<job>-storage``, read from the operator's default Secrets
    (None when the job names its own storage)."""
    if not uses_default_storage(job):
        return None
    d, ns = rt.settings.storage, rt.settings.namespace
    if not ns:
        raise BuildError("the operator does not know its namespace (set POD_NAMESPACE)")
    data: dict[str, str] = {}
    s3 = job.spec.storage.s3
    if s3 is not None and s3.credentials_secret == names.storage_secret(job.name):
        assert d.s3_secret
        for key in names.S3_CREDENTIAL_KEYS:
            data[key] = await _secret_value(rt, (ns, d.s3_secret), key)
    mongo = job.spec.state_store.mongodb
    if mongo is not None and mongo.uri_secret == names.storage_secret(job.name):
        assert d.mongodb_secret
        data[names.MONGODB_URI_KEY] = await _secret_value(
            rt, (ns, d.mongodb_secret), names.MONGODB_URI_KEY
        )
    return data


async def _state_for(rt: Runtime, job: FederatedJob, namespace: str) -> StateStore:
    """The job's state store: the override, or the MongoDB URI in its Secret (for the
    default storage, the operator's own Secret)."""
    uri = rt.state_override
    if uri is None:
        mongo = job.spec.state_store.mongodb
        if mongo is None or not mongo.uri_secret:
            raise BuildError("spec.stateStore.mongodb.uriSecret is required on Kubernetes")
        where = _default_secret(rt, job, mongo.uri_secret) or (namespace, mongo.uri_secret)
        uri = await _secret_value(
            rt, where, names.MONGODB_URI_KEY, "spec.stateStore.mongodb.uriSecret"
        )
        if "/" not in uri.split("://", 1)[-1].split("?")[0]:
            uri = uri.rstrip("/") + f"/{mongo.database}"
    if uri not in rt.stores:
        rt.stores[uri] = await asyncio.to_thread(open_state_store, uri)
    return rt.stores[uri]


async def _reducer_token(rt: Runtime, namespace: str, name: str) -> tuple[str, bool]:
    """The reducer token of an existing ``<job>-tokens`` Secret (a new one only the
    first time), and whether that Secret still holds an older operator's shared
    client token (``names.LEGACY_CLIENT_TOKEN_KEY``), which `_drop_legacy_keys` removes."""
    assert rt.kube is not None
    sec = await rt.kube.get("v1", "Secret", namespace, names.tokens_secret(name))
    data = (sec or {}).get("data") or {}
    encoded = data.get(names.REDUCER_TOKEN_KEY)
    token = base64.b64decode(encoded).decode() if encoded else secrets.token_urlsafe(32)
    return token, names.LEGACY_CLIENT_TOKEN_KEY in data


async def _drop_legacy_keys(
    rt: Runtime,
    body: Any,
    namespace: str,
    name: str,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """Remove the shared client token an older operator left in ``<job>-tokens``.

    Server-side apply would keep it: this operator never owned that key under
    ``data`` (older versions wrote it through ``stringData``), so a merge patch
    with ``null`` deletes it. No pod reads it any more.
    """
    assert rt.kube is not None
    sec = names.tokens_secret(name)
    key = names.LEGACY_CLIENT_TOKEN_KEY
    await rt.kube.merge_patch("v1", "Secret", namespace, sec, {"data": {key: None}})
    msg = f"removed the shared client token (key {key!r}) from Secret {sec}: clients now use "
    msg += "per-client credentials (fedkube clients issue)"
    logger.info(msg)
    kopf.info(body, reason=EventReason.RECONCILED, message=msg)


def _parse(rt: Runtime, body: Any) -> FederatedJob:
    """The job as its children see it: uid kept (the job key), default storage filled in."""
    job = parse_job(manifest_of(body), source=f"FederatedJob {body['metadata'].get('name')}")
    return with_defaults(job, rt.settings)


async def _client_tokens(
    rt: Runtime,
    job: FederatedJob,
    namespace: str,
    state: StateStore,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> dict[str, str] | None:
    """One token per in-cluster client (spec.clients.template): those already in
    ``<job>-client-tokens``, and new ones issued into the state store for new pods;
    the credentials of pods scaled away are revoked. None without a template."""
    assert rt.kube is not None
    secret = names.client_tokens_secret(job.name)
    sec = await rt.kube.get("v1", "Secret", namespace, secret)
    have = {k: base64.b64decode(v).decode() for k, v in ((sec or {}).get("data") or {}).items()}
    wanted = client_ids(job)
    tokens = {c: have[c] for c in wanted if c in have}
    key = job.key
    for cid in wanted:
        if cid not in tokens:
            token, _ = await asyncio.to_thread(
                state.issue_credential, key, cid, f"in-cluster client pod of {namespace}/{job.name}"
            )
            tokens[cid] = token
    gone = sorted(set(have) - set(wanted))
    for cid in gone:
        await asyncio.to_thread(state.revoke_credentials, key, cid)
    if gone:
        logger.info(f"revoked the credentials of {len(gone)} client pod(s) scaled away")
    return tokens if job.spec.clients.template is not None else None


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile(
    *,
    body: kopf.Body,
    name: str,
    namespace: str | None,
    uid: str,
    memo: Any,
    patch: kopf.Patch,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """Apply every child (idempotent server-side apply) and publish the spec to the
    state store, where the reducer follows replicas and suspend."""
    rt = _runtime(memo)
    assert rt.kube is not None and namespace is not None
    try:
        job = _parse(rt, body)
        check_runnable(job)  # what is wrong with the spec, before any Secret is read
        reducer_token, legacy_client_token = await _reducer_token(rt, namespace, name)
        storage = await _storage_data(rt, job)
        state = await _state_for(rt, job, namespace)
    except (SpecError, BuildError) as exc:
        kopf.warn(body, reason=EventReason.INVALID_SPEC, message=str(exc))
        patch.status["phase"] = Phase.FAILED.value
        patch.status["message"] = str(exc)
        raise kopf.PermanentError(str(exc)) from None
    try:
        # The record first: the reducer follows spec.rounds, replicas and suspend there,
        # and in-cluster clients' credentials are issued into it.
        await asyncio.to_thread(state.create_job, job.key, job_manifest(job, namespace))
        client_tokens = await _client_tokens(rt, job, namespace, state, logger)
    except FedkubeError as exc:
        kopf.warn(body, reason=EventReason.STATE_STORE_UNAVAILABLE, message=str(exc))
        raise kopf.TemporaryError(f"state store: {exc}", delay=10) from None
    try:
        children = build_children(
            job,
            namespace,
            uid,
            rt.settings,
            reducer_token=reducer_token,
            storage=storage,
            client_tokens=client_tokens,
        )
    except BuildError as exc:
        kopf.warn(body, reason=EventReason.INVALID_SPEC, message=str(exc))
        patch.status["phase"] = Phase.FAILED.value
        patch.status["message"] = str(exc)
        raise kopf.PermanentError(str(exc)) from None
    for obj in children:
        await rt.kube.apply(obj)
    if legacy_client_token:
        await _drop_legacy_keys(rt, body, namespace, name, logger)
    kinds = ", ".join(sorted({o["kind"] for o in children}))
    summary = f"applied {len(children)} children ({kinds})"
    logger.info(summary)
    kopf.info(body, reason=EventReason.RECONCILED, message=summary)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@kopf.timer(GROUP, VERSION, PLURAL, interval=SYNC_INTERVAL, initial_delay=1.0)
async def sync_status(
    *,
    body: kopf.Body,
    name: str,
    namespace: str | None,
    memo: Any,
    patch: kopf.Patch,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """Status from the state store (rounds, metrics, phase) and from the children
    (ready combiners and reducer); Events on transitions; TTL after finish."""
    rt = _runtime(memo)
    assert rt.kube is not None and namespace is not None
    try:
        job = _parse(rt, body)
        state = await _state_for(rt, job, namespace)
        record = await asyncio.to_thread(state.get_job, job.key)
    except (SpecError, BuildError):
        return  # reconcile reported it
    except FedkubeError as exc:
        logger.warning(f"state store unavailable: {exc}")
        record = None
    sts = await rt.kube.get("apps/v1", "StatefulSet", namespace, names.combiner_statefulset(name))
    dep = await rt.kube.get("apps/v1", "Deployment", namespace, names.reducer_deployment(name))
    old = dict(body.get("status") or {})
    new = status_from(
        job=job,
        record=None if record is None else record.__dict__,
        statefulset=None if sts is None else sts.get("status", {}),
        deployment=None if dep is None else dep.get("status", {}),
        generation=body["metadata"].get("generation", 0),
        previous=old,
        now=_now(),
    )
    changed = {k: v for k, v in new.items() if old.get(k) != v}
    if changed:
        patch.status.update(changed)
    phase = new["phase"]  # status_from always sets it
    if phase != old.get("phase"):
        msg = new.get("message") or f"phase {phase}"
        if phase == Phase.FAILED:
            kopf.warn(body, reason=phase_event_reason(phase), message=msg)
        else:
            kopf.info(body, reason=phase_event_reason(phase), message=msg)
    if new.get("completedRounds", 0) > old.get("completedRounds", 0):
        metric = new.get("headlineMetric") or ""
        kopf.info(
            body,
            reason=EventReason.ROUND_COMPLETED,
            message=f"round {new['completedRounds']}/{job.spec.rounds} committed {metric}".strip(),
        )
    # from the status an earlier sync published, never the one being patched now: a
    # job that finished more than ttl seconds before this sync would otherwise be
    # deleted before anyone (kubectl wait, a CI script) could see its final phase
    await _maybe_expire(rt, body, job, old, logger)


async def _maybe_expire(
    rt: Runtime,
    body: Any,
    job: FederatedJob,
    status: dict[str, Any],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """Delete the job once `status` (as published) is terminal and
    ttlSecondsAfterFinished have passed since its completionTime."""
    ttl = job.spec.ttl_seconds_after_finished
    done = status.get("completionTime")
    if ttl is None or status.get("phase") not in TERMINAL_PHASES or not done:
        return
    if (_now() - parse_rfc3339(done)).total_seconds() >= ttl:
        md = body["metadata"]
        logger.info(f"ttlSecondsAfterFinished={ttl} elapsed: deleting the FederatedJob")
        kopf.info(body, reason=EventReason.EXPIRED, message=f"deleted {ttl}s after it finished")
        assert rt.kube is not None
        await rt.kube.delete(API_VERSION, KIND, md["namespace"], md["name"])
