"""A real Prometheus server on loopback, for tests of the metrics endpoints. I/O side.

Debian's ``prometheus`` package (``/usr/bin/prometheus``, v2.42 on bookworm;
``PROMETHEUS_BIN`` names another binary). Never the system service: a process
of its own with its config file and TSDB in a temporary directory, listening
on a free loopback port, scraping every `scrape_interval` seconds the targets
of file_sd files (e.g. the ``run/metrics-targets.json`` of ``fedkube run``)
and of a static list.

``start_prometheus(file_sd=[path])`` returns a PrometheusServer (``.stop()``
it)::

    PrometheusServer  .url  .query(expr) -> result list  .value(expr) -> float | None
                      .targets() -> active targets (health, lastError, labels)
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedkube.devenv.base import START_TIMEOUT, LocalServer, find_binary, start_on_free_ports
from fedkube.errors import ServiceUnavailable
from fedkube.process import ChildProcess, free_ports

PROMETHEUS_HINT = (
    "the Prometheus test needs Debian's prometheus package (apt-get install prometheus), "
    "or PROMETHEUS_BIN naming a prometheus binary"
)
#: the scrape job of the targets
SCRAPE_JOB = "fedkube"
#: seconds of an HTTP call to the server
HTTP_TIMEOUT = 5.0


def find_prometheus() -> Path | None:
    """The `prometheus` binary: $PROMETHEUS_BIN, /usr/bin/prometheus, or on PATH."""
    return find_binary("PROMETHEUS_BIN", Path("/usr/bin/prometheus"))


def prometheus_config(
    *,
    file_sd: list[Path] | None = None,
    static_targets: list[str] | None = None,
    scrape_interval: float = 1.0,
) -> dict[str, Any]:
    """A config scraping the file_sd files and static targets (host:port) every
    `scrape_interval` seconds. ``honor_labels``: the ``job`` label of fedkube's
    metrics (the FederatedJob) is kept as it is, not renamed ``exported_job``."""
    interval = f"{max(1, round(scrape_interval * 1000))}ms"
    scrape: dict[str, Any] = {
        "job_name": SCRAPE_JOB,
        "honor_labels": True,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "metrics_path": "/metrics",
    }
    if file_sd:
        scrape["file_sd_configs"] = [
            {"files": [str(p) for p in file_sd], "refresh_interval": interval}
        ]
    if static_targets:
        scrape["static_configs"] = [{"targets": list(static_targets)}]
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [scrape],
    }


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
        return json.loads(resp.read())


@dataclass
class PrometheusServer(LocalServer):
    url: str  #: http://127.0.0.1:PORT

    @property
    def address(self) -> str:
        return f"Prometheus {self.url}"

    def _probe(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
            return bool(resp.status == 200)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query (``data.result``; [] when nothing matches).
        Raises ServiceUnavailable when the server answers with an error."""
        qs = urllib.parse.urlencode({"query": expr})
        body = _get_json(f"{self.url}/api/v1/query?{qs}")
        if body.get("status") != "success":
            raise ServiceUnavailable(
                f"{self.address}: query {expr!r} failed: {body.get('error', body)}",
                PROMETHEUS_HINT,
            )
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of an instant query with one result (None when there is none)."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise ValueError(f"query {expr!r} has {len(result)} results; aggregate them")
        return float(result[0]["value"][1])

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets (``scrapeUrl``, ``health``, ``lastError``, ``labels``)."""
        body = _get_json(f"{self.url}/api/v1/targets?state=active")
        active: list[dict[str, Any]] = body["data"]["activeTargets"]
        return active


def prometheus_argv(prometheus: Path, tmp: Path, port: int) -> list[str]:
    return [
        str(prometheus),
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]


def _new_prometheus_server(prometheus: Path, config: dict[str, Any]) -> PrometheusServer:
    """A Prometheus on a new free port in a new temporary directory (not started)."""
    tmp = Path(tempfile.mkdtemp(prefix="fedkube-prometheus-"))
    (tmp / "data").mkdir()
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (port,) = free_ports(1)
    argv = prometheus_argv(prometheus, tmp, port)
    proc = ChildProcess("Prometheus", argv, tmp / "prometheus.log", cwd=tmp, hint=PROMETHEUS_HINT)
    return PrometheusServer(f"http://127.0.0.1:{port}", process=proc, tmpdir=tmp)


def start_prometheus(
    *,
    file_sd: list[Path] | None = None,
    static_targets: list[str] | None = None,
    scrape_interval: float = 1.0,
    timeout: float = START_TIMEOUT,
    attempts: int = 3,
) -> PrometheusServer:
    """Start Prometheus on a free loopback port, scraping `file_sd` files and
    `static_targets`, and wait until it is ready (``/-/ready``). Raises
    ServiceUnavailable (with the log tail) when it cannot."""
    prometheus = find_prometheus()
    if prometheus is None or not os.access(prometheus, os.X_OK):
        where = prometheus or "not at /usr/bin/prometheus nor on PATH"
        raise ServiceUnavailable(f"prometheus binary not found ({where})", PROMETHEUS_HINT)
    config = prometheus_config(
        file_sd=file_sd, static_targets=static_targets, scrape_interval=scrape_interval
    )
    return start_on_free_ports(
        lambda: _new_prometheus_server(prometheus, config), timeout=timeout, attempts=attempts
    )
