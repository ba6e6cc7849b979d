"""`fedkube dashboard` served on loopback and loaded in headless Chromium (Debian's
package, driven by Playwright's driver: no browser download).

- after a real local run, the Job detail page shows the job's name, its phase and
  a rendered chart (a Vega canvas or svg); a screenshot goes to
  test-artifacts/dashboard/ under the repository;
- a Running job's page refreshes by itself without reloading the page;
- the Models page's download streams the model, checked against its sha256, and a
  model file changed behind the lineage's back is refused (409), not sent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedkube.state import open_state_store
from tests.support.federation import Federation, toy_manifest, write_job

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("FEDKUBE_CHROMIUM", "/usr/bin/chromium")
#: the flags the issue names; Chromium's own background connections are refused here
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
JOB = "dash"


def _need_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    message = f"no Chromium at {CHROMIUM} (Debian package chromium; scripts/system_deps.sh)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dashboard:
    """`fedkube dashboard` as a real process on a free loopback port."""

    def __init__(self, workdir: Path, log: Path, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "fedkube", "dashboard", "--workdir", str(workdir)),
                *("--port", str(self.port), "--kube", "off", *args),
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dashboard exited:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"dashboard did not answer /healthz:\n{log.read_text()}")

    def get(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, headers with lower-case names) of a GET."""
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=60) as r:
                return r.status, r.read(), {k.lower(): v for k, v in r.headers.items()}
        except urllib.error.HTTPError as e:
            return e.code, e.read(), {k.lower(): v for k, v in e.headers.items()}

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workdir of a finished 3-round local run with a failing client."""
    base = tmp_path_factory.mktemp("dash-browser")
    manifest = toy_manifest(
        JOB,
        rounds=3,
        combiners=2,
        clients=4,
        min_updates=2,
        config={"crash": {"client-2": "raise"}},
    )
    with Federation(write_job(base / "job", manifest), base / "run") as fed:
        fed.start()
        assert fed.wait_reducer() == 0, fed.log("reducer")
    return base / "run"


@pytest.fixture(scope="module")
def artifacts(pytestconfig: pytest.Config) -> Path:
    out = Path(pytestconfig.rootpath) / "test-artifacts" / "dashboard"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def dashboard(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    d = Dashboard(finished_run, tmp_path_factory.mktemp("dash-log") / "dashboard.log")
    yield d
    d.close()


CHART = ".vega-embed canvas, .vega-embed svg"


def test_job_detail_page_in_chromium(dashboard: Dashboard, browser: Any, artifacts: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{dashboard.url}/")  # the app's first run registers its pages
    page.get_by_role("heading", name="Jobs").wait_for(timeout=60_000)
    page.goto(f"{dashboard.url}/job?job={JOB}")
    page.get_by_role("heading", name=JOB).wait_for(timeout=60_000)
    page.get_by_text("Succeeded", exact=True).first.wait_for(timeout=30_000)
    page.wait_for_selector(CHART, state="visible", timeout=60_000)
    assert page.locator(CHART).count() >= 1
    assert page.get_by_text("3 of 3 rounds committed").count() == 1
    page.wait_for_timeout(1000)  # let the other charts finish drawing
    shot = artifacts / "job-detail.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()


def test_a_running_job_refreshes_without_reloading(
    browser: Any, tmp_path: Path, artifacts: Path
) -> None:
    workdir = tmp_path / "wd"
    st = open_state_store(f"sqlite:///{workdir / 'state.db'}")
    st.create_job(JOB, toy_manifest(JOB))
    st.update_job(JOB, phase="Running", started_at=time.time())
    st.begin_attempt(JOB, 1, 1)
    d = Dashboard(workdir, tmp_path / "dashboard.log", "--refresh", "1")
    try:
        page = browser.new_page()
        page.goto(f"{d.url}/")
        page.get_by_role("heading", name="Jobs").wait_for(timeout=60_000)
        page.goto(f"{d.url}/job?job={JOB}")
        page.get_by_role("heading", name=JOB).wait_for(timeout=60_000)
        page.evaluate("window.__fedkube_marker = 42")
        # round 1 commits while the page is open: the fragment shows it by itself
        st.commit_round(
            JOB,
            1,
            1,
            model_key="m1",
            n_updates=3,
            num_examples=30,
            metrics={"loss": 0.5},
            timings={"train_s": 1.0},
            participants=[],
            combiners={},
        )
        st.update_job(JOB, completed_rounds=1, current_round=1)
        page.get_by_text("1 of 3 rounds committed").wait_for(timeout=30_000)
        assert page.evaluate("window.__fedkube_marker") == 42  # the same document
        page.screenshot(path=str(artifacts / "job-detail-running.png"), full_page=True)
        page.close()
    finally:
        d.close()
        st.close()


def test_model_download_is_streamed_and_verified(
    dashboard: Dashboard, finished_run: Path, tmp_path: Path
) -> None:
    st = open_state_store(f"sqlite:///{finished_run / 'state.db'}")
    try:
        models = st.list_models(JOB)
    finally:
        st.close()
    latest = max(models, key=lambda m: m.round)
    status, body, headers = dashboard.get(f"/download/{JOB}/{latest.round}")
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == latest.sha256
    assert len(body) == latest.size
    assert headers["x-fedkube-sha256"] == latest.sha256
    assert f'filename="{JOB}-round-{latest.round}.safetensors"' in headers["content-disposition"]
    assert dashboard.get(f"/download/{JOB}/999")[0] == 404
    # a model file changed behind the lineage's back is refused, not sent
    first = min(models, key=lambda m: m.round)
    path = finished_run / "store" / first.key
    saved = tmp_path / "saved"
    shutil.copyfile(path, saved)
    try:
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        status, body, _ = dashboard.get(f"/download/{JOB}/{first.round}")
        assert status == 409
        assert b"does not match the recorded lineage" in body
    finally:
        shutil.copyfile(saved, path)
