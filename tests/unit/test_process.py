"""fedkube.process: real child processes, started, waited for and stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedkube.errors import ServiceUnavailable
from fedkube.process import (
    ChildProcess,
    free_ports,
    is_zombie,
    stop_all,
    stop_pids,
    wait_gone,
    write_atomic,
)


def python(tmp: Path, name: str, code: str, **kw: object) -> ChildProcess:
    return ChildProcess(name, [sys.executable, "-c", code], tmp / f"{name}.log", **kw)  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_output_goes_to_the_log_and_an_exit_names_its_tail(tmp_path: Path) -> None:
    p = python(tmp_path, "talker", "print('hello'); import sys; sys.exit(3)", hint="try X")
    p.start()
    p.popen.wait(timeout=30)  # type: ignore[union-attr]
    assert p.returncode == 3 and not p.running
    with pytest.raises(ServiceUnavailable) as info:
        p.check_running()
    assert "talker exited with 3:" in str(info.value) and "hello" in str(info.value)
    assert info.value.hint == "try X"
    assert "==> " in p.log_path.read_text()  # the banner with the argv
    p.stop()


def test_wait_ready_returns_the_probe_value(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    p = python(
        tmp_path,
        "slow",
        "import time, pathlib; time.sleep(0.3); "
        f"pathlib.Path({str(flag)!r}).write_text('42'); time.sleep(60)",
    )
    p.start()
    try:
        got = p.wait_ready(lambda: flag.read_text() if flag.exists() else None, 30)
        assert got == "42"
    finally:
        p.stop(grace=1)


def test_wait_ready_fails_with_the_log_when_time_runs_out(tmp_path: Path) -> None:
    p = python(
        tmp_path, "never", "print('still starting', flush=True); import time; time.sleep(60)"
    )
    p.start()
    try:
        with pytest.raises(ServiceUnavailable) as info:
            p.wait_ready(lambda: 1 / 0, 0.5, what="serve")
        text = str(info.value)
        assert "never did not serve within 0s" in text or "never did not serve within 1s" in text
        assert "ZeroDivisionError" in text and "still starting" in text
    finally:
        p.stop(grace=1)


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    code = (
        "import signal, time, subprocess, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    p = python(tmp_path, "stubborn", code, banner=False)
    p.start()
    grandchild = int(p.wait_ready(lambda: p.log_path.read_text().strip() or None, 30))
    p.stop(grace=0.5)
    assert p.returncode == -signal.SIGKILL
    # The whole group went: the child it started is gone too.
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_stop_all_terms_everyone_then_kills_the_stubborn(tmp_path: Path) -> None:
    """Polite processes exit on their SIGTERM; stubborn ones are SIGKILLed, never
    before the grace has passed."""
    polite = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))"
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    procs = [
        python(tmp_path, name, f"{code}; print('up', flush=True); time.sleep(60)", banner=False)
        for name, code in (
            ("client", polite),
            ("stuck-1", stubborn),
            ("reducer", polite),
            ("stuck-2", stubborn),
        )
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.wait_ready(lambda p=p: "up" in p.log_path.read_text(), 30)
    t0 = time.monotonic()
    stop_all(procs, grace=1.0)
    took = time.monotonic() - t0
    assert [p.returncode for p in procs] == [0, -signal.SIGKILL, 0, -signal.SIGKILL]
    assert took >= 1.0


def test_a_missing_program_is_service_unavailable(tmp_path: Path) -> None:
    p = ChildProcess("ghost", [str(tmp_path / "no-such-binary")], tmp_path / "g.log", hint="h")
    with pytest.raises(ServiceUnavailable, match="cannot run") as info:
        p.start()
    assert info.value.hint == "h" and not p.running


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_stop_pids_terms_then_kills_what_ignores_sigterm_and_counts_zombies_as_gone() -> None:
    """Processes stopped by pid alone (the cluster's, recorded in a state file): the
    polite one goes on SIGTERM, the stubborn one on SIGKILL after the grace; an
    exited child not yet reaped (a zombie) counts as gone, not as running."""
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert stubborn.stdout is not None and stubborn.stdout.readline() == "ready\n"
    pids = [polite.pid, stubborn.pid]
    assert not any(is_zombie(p) for p in pids)
    assert not wait_gone(pids, 0.2)
    t0 = time.monotonic()
    stop_pids(pids, grace=1.0)
    assert time.monotonic() - t0 >= 1.0  # the stubborn one outlived the grace
    assert all(is_zombie(p) for p in pids)  # exited; our children, so not yet reaped
    assert polite.wait(5) == -signal.SIGTERM
    assert stubborn.wait(5) == -signal.SIGKILL
    assert is_zombie(polite.pid)  # reaped now: gone counts too


def test_write_atomic_replaces_the_file_whole_with_the_mode_asked(tmp_path: Path) -> None:
    path = tmp_path / "x.port"
    path.write_text("old, longer than the new text")
    write_atomic(path, "4242")
    assert path.read_text() == "4242"
    write_atomic(secret := tmp_path / "c.token", "t\n", mode=0o600)
    assert secret.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.token", "x.port"]  # no temp file
