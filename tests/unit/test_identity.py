"""Client identity (fedkube.identity), the combiner's refusal merging and the
weight cap: pure logic."""

from __future__ import annotations

import pytest

from fedkube.combiner.auth import RefusalLog, peer_host
from fedkube.identity import (
    Credentials,
    check_client_id,
    looks_like_token,
    new_token,
    token_digest,
    token_id,
)
from fedkube.reducer.plan import weight_cap
from fedkube.spec import WeightsSpec
from fedkube.state.base import CredentialRecord


def record(client: str, token: str, revoked: float | None = None) -> CredentialRecord:
    d = token_digest(token)
    return CredentialRecord("j", client, token_id(d), d, 1.0, revoked)


def test_tokens_are_random_and_recognisable():
    a, b = new_token(), new_token()
    assert a != b and looks_like_token(a) and looks_like_token(b)
    assert not looks_like_token("fkc_short") and not looks_like_token("Bearer x")
    assert token_digest(a) != token_digest(b) and len(token_digest(a)) == 64


def test_credentials_identify_only_live_tokens():
    alice, bob, old = new_token(), new_token(), new_token()
    creds = Credentials.from_records(
        [record("alice", alice), record("bob", bob), record("alice", old, revoked=5.0)]
    )
    assert len(creds) == 2
    found = creds.identify(alice)
    assert found is not None and found.client == "alice"
    assert creds.identify(bob).client == "bob"  # type: ignore[union-attr]
    assert creds.identify(old) is None  # revoked
    assert creds.identify(new_token()) is None  # never issued
    assert creds.identify("not-a-token") is None
    assert creds.is_live(token_digest(alice)) and not creds.is_live(token_digest(old))


@pytest.mark.parametrize("cid", ["client-0", "site.a", "node:3", "x@y", "A1"])
def test_valid_client_ids(cid):
    assert check_client_id(cid) == cid


@pytest.mark.parametrize("cid", ["", " a", "a b", "-a", "a" * 129, "é"])
def test_invalid_client_ids(cid):
    with pytest.raises(ValueError, match="client id"):
        check_client_id(cid)


def test_refusals_are_merged_per_peer_and_kind():
    log = RefusalLog(interval=10.0, max_keys=2)
    assert log.note("10.0.0.1", "AuthFailed", "m1", now=0.0)  # the first: record now
    for i in range(1000):
        assert not log.note("10.0.0.1", "AuthFailed", f"m{i}", now=1.0)
    assert log.note("10.0.0.1", "Impersonation", "x", now=1.0)  # another kind
    assert log.note("10.0.0.2", "AuthFailed", "y", now=1.0)  # over max_keys: merged
    assert not log.note("10.0.0.3", "AuthFailed", "z", now=1.0)
    assert log.due(now=5.0) == []
    due = log.due(now=11.0)
    assert ("10.0.0.1", "AuthFailed", 1000, "m999") in due
    assert ("(other peers)", "AuthFailed", 1, "z") in due
    assert all(kind != "Impersonation" for _, kind, _, _ in due)  # nothing more to say
    assert log.note("10.0.0.1", "AuthFailed", "again", now=12.0)  # a new interval


def test_peer_host():
    assert peer_host("ipv4:127.0.0.1:5555") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:5555") == "::1"
    assert peer_host("unix:/tmp/sock") == "unix:/tmp/sock"


def test_weight_cap():
    assert weight_cap(WeightsSpec(), [10, 11, 12]) == 0.0
    assert weight_cap(WeightsSpec(max_examples=50), []) == 50.0
    spec = WeightsSpec(max_examples=50, max_median_multiple=3.0)
    assert weight_cap(spec, []) == 50.0  # round 1: no previous claims
    assert weight_cap(spec, [10, 11, 10**12]) == 33.0  # 3 x median 11
    assert weight_cap(spec, [100, 200, 300]) == 50.0
    assert weight_cap(WeightsSpec(max_median_multiple=2.0), [4, 6]) == 10.0
