"""What `fedkube dashboard` hands the Streamlit app. Pure module.

Streamlit runs the app script again on every interaction, in threads of the
server process, so the settings travel in environment variables of that
process (``FEDKUBE_DASHBOARD_*``) rather than as arguments. None of them holds
a secret the dashboard shows: URIs are shown only as the stores redact them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

ENV_STATE: Final = "FEDKUBE_DASHBOARD_STATE"
ENV_STORE: Final = "FEDKUBE_DASHBOARD_STORE"
ENV_WORKDIR: Final = "FEDKUBE_DASHBOARD_WORKDIR"
ENV_REFRESH: Final = "FEDKUBE_DASHBOARD_REFRESH"
ENV_KUBE: Final = "FEDKUBE_DASHBOARD_KUBE"
ENV_NAMESPACE: Final = "FEDKUBE_DASHBOARD_NAMESPACE"

#: seconds between live refreshes of a page while a job runs
DEFAULT_REFRESH_SECONDS: Final = 3.0
#: a client not seen for longer than this (seconds) shows as offline
OFFLINE_AFTER_SECONDS: Final = 60.0


@dataclass(frozen=True)
class DashboardConfig:
    #: the state store URI (sqlite:///..., mongodb://...)
    state: str
    #: the object store URI for model downloads; None: each job's own (from its manifest)
    store: str | None = None
    #: the workdir a job's relative storage paths resolve against
    workdir: str = "."
    refresh_seconds: float = DEFAULT_REFRESH_SECONDS
    #: read FederatedJob objects: "auto" (when a kubeconfig or service account is
    #: found), "off"
    kube: str = "auto"
    #: the namespace of FederatedJob objects; "" for all namespaces
    namespace: str = ""

    def to_env(self) -> dict[str, str]:
        env = {
            ENV_STATE: self.state,
            ENV_WORKDIR: self.workdir,
            ENV_REFRESH: str(self.refresh_seconds),
            ENV_KUBE: self.kube,
            ENV_NAMESPACE: self.namespace,
        }
        if self.store:
            env[ENV_STORE] = self.store
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DashboardConfig:
        """The settings `fedkube dashboard` exported; ValueError naming what is missing."""
        env = os.environ if env is None else env
        state = env.get(ENV_STATE, "")
        if not state:
            raise ValueError(
                f"${ENV_STATE} is not set: start the dashboard with `fedkube dashboard "
                "--workdir DIR` or `--state URI`"
            )
        try:
            refresh = float(env.get(ENV_REFRESH, DEFAULT_REFRESH_SECONDS))
        except ValueError:
            raise ValueError(f"${ENV_REFRESH} must be a number of seconds") from None
        return cls(
            state=state,
            store=env.get(ENV_STORE) or None,
            workdir=env.get(ENV_WORKDIR, "."),
            refresh_seconds=max(0.5, refresh),
            kube=env.get(ENV_KUBE, "auto"),
            namespace=env.get(ENV_NAMESPACE, ""),
        )
