"""The limits a train command runs under: pure logic and the capped log file.

The processes themselves are in tests/integration/test_commands.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkube.client.runner import (
    MIN_TASK_SECONDS,
    NO_DEADLINE_SECONDS,
    REPORT_MARGIN_MAX,
    REPORT_MARGIN_MIN,
    task_timeout,
)
from fedkube.contract import CREDENTIAL_ENV, command_environ, is_credential_env
from fedkube.process import COMMAND_TAIL_BYTES, CappedLog
from fedkube.rpc import CLIENT_TOKEN_ENV, REDUCER_TOKEN_ENV
from fedkube.spec import MongoStateSpec

NOW = 1_700_000_000.0


def _ms(seconds_from_now: float) -> int:
    return int((NOW + seconds_from_now) * 1000)


@pytest.mark.parametrize(
    ("left", "limit"),
    [
        (1000.0, 1000.0 - REPORT_MARGIN_MAX),  # 10% would be 100 s: capped at 15
        (100.0, 90.0),  # 10% of the time left
        (10.0, 10.0 - REPORT_MARGIN_MIN),  # 10% would be 1 s: at least 2
        (2.5, MIN_TASK_SECONDS),  # never below 1 s
        (-5.0, MIN_TASK_SECONDS),  # already late
    ],
)
def test_the_time_limit_ends_a_margin_before_the_deadline(left: float, limit: float) -> None:
    assert task_timeout(_ms(left), now=NOW) == pytest.approx(limit, abs=1e-3)


def test_a_task_without_deadline_gets_the_default_limit() -> None:
    assert task_timeout(0, now=NOW) == NO_DEADLINE_SECONDS


def test_every_fedkube_credential_is_hidden_from_commands() -> None:
    assert {CLIENT_TOKEN_ENV, REDUCER_TOKEN_ENV} <= CREDENTIAL_ENV
    assert MongoStateSpec().uri_env in CREDENTIAL_ENV
    for name in (
        CLIENT_TOKEN_ENV,
        REDUCER_TOKEN_ENV,
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "FEDKUBE_S3_ENDPOINT_SECRET",
        "FEDKUBE_SOME_NEW_TOKEN",
        "fedkube_tls_key",
    ):
        assert is_credential_env(name), name
    for name in ("FEDKUBE_JOB", "FEDKUBE_CONFIG", "PATH", "HOME", "AWS_REGION"):
        assert not is_credential_env(name), name


def test_command_environ_strips_inherited_credentials_only() -> None:
    env = command_environ(
        {CLIENT_TOKEN_ENV: "t", "PATH": "/bin", "MY_URI": "mongodb://x", "KEEP": "1"},
        {"SPEC_VAR": "s"},
        {"FEDKUBE_ROUND": "3"},
        hidden=frozenset({"MY_URI"}),
    )
    assert env == {"PATH": "/bin", "KEEP": "1", "SPEC_VAR": "s", "FEDKUBE_ROUND": "3"}


def test_a_capped_log_keeps_the_newest_bytes_and_the_tail(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "t.log", cap=1000)
    for i in range(100):
        log.write(f"line {i:03d} ".encode() + b"." * 40 + b"\n")  # 50 bytes each
    log.close()
    text = (tmp_path / "t.log").read_text()
    head, _, kept = text.partition("\n")
    assert len(kept) <= 1000 and kept.endswith("line 099 " + "." * 40 + "\n")
    assert head == f"[fedkube: the first {5000 - len(kept)} bytes of output were dropped; " + (
        f"the last {len(kept)} follow]"
    )
    assert not (tmp_path / "t.log.1").exists()
    # the kept bytes are the newest, in order
    numbers = [int(ln.split()[1]) for ln in kept.splitlines()]
    assert numbers == list(range(100 - len(numbers), 100))
    assert log.total == 5000
    assert log.tail(3).splitlines() == [f"line {i:03d} " + "." * 40 for i in (97, 98, 99)]


def test_a_capped_log_tail_is_bounded_for_one_huge_line(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "t.log", cap=1 << 20)
    for _ in range(50):
        log.write(b"y" * 100_000)
    log.write(b"\nthe end\n")
    log.close()
    tail = log.tail()
    assert tail == "the end"  # the cut line before it is left out
    assert len(log.tail(lines=10_000).encode()) <= COMMAND_TAIL_BYTES
    assert (tmp_path / "t.log").stat().st_size <= (1 << 20) + 200


def test_a_short_log_is_kept_whole(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "t.log")
    log.write(b"hello\nworld\n")
    log.close()
    assert (tmp_path / "t.log").read_text() == "hello\nworld\n"
    assert log.tail() == "hello\nworld"
