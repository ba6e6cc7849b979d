"""Test-suite policy: under CI=true nothing may be skipped.

A skip (a missing optional package, a service that did not start) hides a
missing piece; on CI it becomes a failure with the skip's reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fedkube.devenv.prometheus import (
    PROMETHEUS_HINT,
    PrometheusServer,
    find_prometheus,
    start_prometheus,
)
from fedkube.errors import ServiceUnavailable

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytest_plugins = ["tests.support.fixtures"]


def _fail_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if CI and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (not allowed): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # type: ignore[no-untyped-def]
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.fixture
def prometheus() -> Iterator[Callable[..., PrometheusServer]]:
    """Starts real Prometheus servers (Debian's ``prometheus``; fedkube.devenv.prometheus):
    ``prometheus(file_sd=[path], scrape_interval=1.0)``; all are stopped afterwards.
    A missing binary skips the test (fails it under CI=true) before it starts anything."""
    from tests.support.fixtures import unavailable  # a plugin: imported after registration

    binary = find_prometheus()
    if binary is None or not os.access(binary, os.X_OK):
        unavailable(ServiceUnavailable(f"prometheus binary not found ({binary})", PROMETHEUS_HINT))
    started: list[PrometheusServer] = []

    def start(**kwargs: Any) -> PrometheusServer:
        try:
            server = start_prometheus(**kwargs)
        except ServiceUnavailable as exc:
            unavailable(exc)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
