"""Run the operator: `fedkube operator ...` lands here (I/O)."""

from __future__ import annotations

import asyncio
import logging

import kopf

from fedkube.operator import handlers  # noqa: F401 - registers the handlers
from fedkube.operator.builders import OperatorSettings
from fedkube.operator.handlers import Runtime, configure


def run_operator(
    *,
    namespaces: list[str],
    all_namespaces: bool,
    settings: OperatorSettings,
    kubeconfig: str | None = None,
    state_override: str | None = None,
    liveness_port: int | None = 8080,
    verbose: bool = False,
) -> None:
    """Block serving FederatedJobs until SIGTERM/SIGINT."""
    configure(
        Runtime(
            settings=settings,
            kubeconfig=kubeconfig,
            state_override=state_override,
            clusterwide=all_namespaces,
        )
    )
    if kubeconfig:
        import os

        os.environ["KUBECONFIG"] = kubeconfig  # kopf's own login reads it too
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
    )
    liveness = f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None
    asyncio.run(
        kopf.operator(
            standalone=True,  # one operator replica (Recreate); no peering objects needed
            namespaces=[] if all_namespaces else namespaces,
            clusterwide=all_namespaces,
            liveness_endpoint=liveness,
        )
    )
