"""A thin async Kubernetes API layer for the operator (I/O).

Generic REST calls through kubernetes_asyncio's ApiClient: server-side apply of
any manifest, get, delete, status patches. The handlers stay small and the
manifests stay plain dicts built by the pure builders.
"""

from __future__ import annotations

import os
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from fedkube.operator.crd import PLURAL
from fedkube.spec import API_VERSION, KIND

FIELD_MANAGER = "fedkube-operator"

# (apiVersion, kind) -> (api path prefix, plural); every kind here is namespaced
_KINDS: dict[tuple[str, str], tuple[str, str]] = {
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
    ("v1", "Secret"): ("/api/v1", "secrets"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "Event"): ("/api/v1", "events"),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments"),
    ("apps/v1", "StatefulSet"): ("/apis/apps/v1", "statefulsets"),
    (API_VERSION, KIND): (f"/apis/{API_VERSION}", PLURAL),
}


def resource_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    try:
        prefix, plural = _KINDS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"unsupported kind {api_version}/{kind}") from None
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


class Kube:
    """One ApiClient per operator process (aiohttp session inside)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    @classmethod
    async def connect(cls, kubeconfig: str | None = None) -> Kube:
        cfg = client.Configuration()
        if (
            kubeconfig
            or os.environ.get("KUBECONFIG")
            or not os.environ.get("KUBERNETES_SERVICE_HOST")
        ):
            await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        else:
            config.load_incluster_config(client_configuration=cfg)
        return cls(client.ApiClient(cfg))

    async def close(self) -> None:
        await self.api.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        return await self.api.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            response_types_map={200: "object", 201: "object", 202: "object"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )

    async def apply(self, obj: dict[str, Any], *, force: bool = True) -> Any:
        """Server-side apply (PATCH application/apply-patch+yaml) under our field manager."""
        md = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], md["namespace"], md["name"])
        query = [("fieldManager", FIELD_MANAGER), ("force", "true" if force else "false")]
        return await self._call(
            "PATCH", path, body=obj, query=query, content_type="application/apply-patch+yaml"
        )

    async def merge_patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> Any:
        """JSON merge patch (RFC 7386; ``None`` removes a key) under our field manager."""
        path = resource_path(api_version, kind, namespace, name)
        return await self._call(
            "PATCH",
            path,
            body=patch,
            query=[("fieldManager", FIELD_MANAGER)],
            content_type="application/merge-patch+json",
        )

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any | None:
        try:
            return await self._call("GET", resource_path(api_version, kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            await self._call("DELETE", resource_path(api_version, kind, namespace, name), body=body)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    async def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        import base64

        sec = await self.get("v1", "Secret", namespace, name)
        if sec is None:
            return None
        data = (sec.get("data") or {}).get(key)
        return base64.b64decode(data).decode() if data is not None else None
