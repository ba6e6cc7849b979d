"""Round rollups of the MongoDB store: the dashboard's counts of one round's
update records, computed once and read back instead of the records. Pure module.

Why: FerretDB v1 (the MongoDB the tests and the bench run) uses no index for
any query and decodes every document of a collection it reads (~50 us each),
so grouping the 1M update records of a 1,000 x 1,000 job takes minutes there.
A round's rollup is a few small documents, one per question the dashboard
asks, each in its own collection so that no query decodes what it does not
need. All of one rollup share an `_id` derived from the round and the exact
set of records it counted (its *keys*), so writing it again is a no-op:

=========================  ============================================  ================
collection                 holds, per rollup                             read by
=========================  ============================================  ================
``rollup_keys``            the (attempt, client) of every record         readers, when a
                           counted (written first)                       round has copies
``rollup_cells``           (client, status, count) lines                 participation
``rollup_clients``         per client: an accepted update or not,        client_summaries
                           accepted / rejected / failed, summed
                           train_s and how many, the latest
                           not-accepted update
``rollup_counts``          rows (attempt, combiner, status, reason,      count_updates
                           count, summed weight) (written last)
``rollup_client_blocks``   the rollup_clients of up to BLOCK_ROUNDS      client_summaries
                           consecutive rounds merged, naming the
                           rollups it merged
=========================  ============================================  ================

Large values are *packed*: zlib-compressed UTF-8 in a BSON binary (a
1,000-client round's cells are 24 KB as text, 2.5 KB packed), since decoding
is what FerretDB spends its time on.

How rollups stay correct (MongoStateStore writes them, mongo_queries reads
them) is told in the docstring of fedkube/state/mongo.py. This module only
computes and encodes: RoundRollup from update documents, the documents, their
decoders, and merge_clients() for client_summaries.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedkube.state.base import encode_json
from fedkube.state.update_error import error_text
from fedkube.vocabulary import AssignmentStatus

Doc = dict[str, Any]
#: an update record's key within its round
Key = tuple[int, str]  # (attempt, client)

#: the update fields a rollup reads (a projection for the round's documents)
UPDATE_FIELDS = (
    "round",
    "attempt",
    "client",
    "combiner",
    "status",
    "reason",
    "weight",
    "train_s",
    "at",
    "message",
)
#: consecutive rounds whose client rollups one rollup_client_blocks document merges
BLOCK_ROUNDS = 100
#: the rollup collections, in the order a rollup's documents are inserted: the keys
#: first (a reader that finds any other document of a rollup finds its keys), the
#: counts last (a rollup with counts is complete)
ROLLUPS = ("rollup_keys", "rollup_cells", "rollup_clients", "rollup_counts")

_ACCEPTED = str(AssignmentStatus.ACCEPTED)
_REJECTED = str(AssignmentStatus.REJECTED)
_FAILED = str(AssignmentStatus.FAILED)


def rollup_id(job: str, round: int, keys: Iterable[Key]) -> str:
    """The `_id` of the rollup of `round` that counted exactly the records `keys`."""
    ordered = sorted(keys)
    digest = hashlib.sha256(encode_json(ordered).encode()).hexdigest()[:16]
    return encode_json([job, round, len(ordered), digest])


def latest(docs: Iterable[Doc]) -> dict[int, Doc]:
    """Per round, the rollup document that counted the most records (rollups of a
    round only grow: each counts every record there was when it was built)."""
    out: dict[int, Doc] = {}
    for d in docs:
        r = int(d["round"])
        if r not in out or (int(d["n"]), d["_id"]) > (int(out[r]["n"]), out[r]["_id"]):
            out[r] = d
    return out


@dataclass
class ClientPartial:
    """One client's updates in some rounds, counted (merge() adds two)."""

    rounds: int = 0  # rounds with an accepted update
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    train_sum: float = 0.0  # over accepted updates with train_s > 0
    train_n: int = 0
    #: (at, round, attempt) of the latest not-accepted update, and its error text
    err_key: tuple[float, int, int] | None = None
    err_text: str = ""

    def add(self, d: Mapping[str, Any]) -> None:
        """Count one update record of this client (rounds: see RoundRollup.add)."""
        status = d.get("status", "")
        if status == _ACCEPTED:
            self.accepted += 1
            train = float(d.get("train_s") or 0.0)
            if train > 0:
                self.train_sum += train
                self.train_n += 1
            return
        if status == _REJECTED:
            self.rejected += 1
        elif status == _FAILED:
            self.failed += 1
        key = (float(d.get("at") or 0.0), int(d["round"]), int(d["attempt"]))
        if self.err_key is None or key > self.err_key:
            self.err_key = key
            self.err_text = error_text(d.get("reason") or "", d.get("message") or "")

    def merge(self, other: ClientPartial) -> None:
        """Add `other`, counted over other rounds."""
        self.rounds += other.rounds
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.failed += other.failed
        self.train_sum += other.train_sum
        self.train_n += other.train_n
        if other.err_key is not None and (self.err_key is None or other.err_key > self.err_key):
            self.err_key, self.err_text = other.err_key, other.err_text

    def encode(self, client: str) -> list[Any]:
        err = list(self.err_key) if self.err_key is not None else None
        return [
            client,
            self.rounds,
            self.accepted,
            self.rejected,
            self.failed,
            self.train_sum,
            self.train_n,
            err,
            self.err_text,
        ]

    @classmethod
    def decode(cls, row: list[Any]) -> tuple[str, ClientPartial]:
        client, rounds, acc, rej, fail, tsum, tn, err, text = row
        key = (float(err[0]), int(err[1]), int(err[2])) if err is not None else None
        return client, cls(rounds, acc, rej, fail, tsum, tn, key, text)


@dataclass
class RoundRollup:
    """The dashboard's counts of one round's update records."""

    #: (attempt, combiner, status, reason) -> [count, summed weight]
    counts: dict[tuple[int, str, str, str], list[Any]] = field(default_factory=dict)
    #: (client, status) -> count
    cells: Counter[tuple[str, str]] = field(default_factory=Counter)
    clients: dict[str, ClientPartial] = field(default_factory=dict)
    keys: set[Key] = field(default_factory=set)

    @classmethod
    def of(cls, updates: Iterable[Mapping[str, Any]]) -> RoundRollup:
        """The rollup of one round's update documents (UPDATE_FIELDS of each)."""
        out = cls()
        for d in updates:
            out.add(d)
        return out

    def add(self, d: Mapping[str, Any]) -> None:
        """Count one more update record of the round."""
        attempt, client, status = int(d["attempt"]), d["client"], d["status"]
        row = self.counts.setdefault(
            (attempt, d["combiner"], status, d.get("reason") or ""), [0, 0.0]
        )
        row[0] += 1
        row[1] += float(d.get("weight") or 0.0)
        self.cells[(client, status)] += 1
        partial = self.clients.setdefault(client, ClientPartial())
        partial.add(d)
        if status == _ACCEPTED:
            partial.rounds = 1  # one round, however many accepted updates in it
        self.keys.add((attempt, client))


# ---- the documents


def pack(text: str) -> bytes:
    """`text` compressed (how the large rollup and list values are stored)."""
    return zlib.compress(text.encode(), 6)


def unpack(value: bytes | str) -> str:
    """The text of a packed value (a plain string is returned as it is)."""
    if isinstance(value, str):
        return value
    return zlib.decompress(bytes(value)).decode()


def _dumps(value: Any) -> bytes:
    return pack(json.dumps(value, separators=(",", ":")))


def _escape(s: str) -> str:
    if "\\" not in s and "\t" not in s and "\n" not in s:
        return s
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _unescape(s: str) -> str:
    if "\\" not in s:
        return s
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out.append({"t": "\t", "n": "\n"}.get(s[i + 1], s[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def rollup_docs(job: str, round: int, rollup: RoundRollup) -> dict[str, Doc]:
    """The documents of `rollup`, by collection (in ROLLUPS order)."""
    key = {"_id": rollup_id(job, round, rollup.keys), "job": job, "round": round}
    key["n"] = len(rollup.keys)
    cells = "\n".join(
        f"{_escape(c)}\t{_escape(s)}\t{n}" for (c, s), n in sorted(rollup.cells.items())
    )
    return {
        "rollup_keys": {**key, "keys": _dumps(sorted(rollup.keys))},
        "rollup_cells": {**key, "cells": pack(cells)},
        "rollup_clients": {
            **key,
            "clients": _dumps([p.encode(c) for c, p in sorted(rollup.clients.items())]),
        },
        "rollup_counts": {
            **key,
            "rows": _dumps([[*k, n, w] for k, (n, w) in sorted(rollup.counts.items())]),
        },
    }


def keys_of(doc: Mapping[str, Any]) -> set[Key]:
    """The (attempt, client) of the records a rollup counted (its rollup_keys doc)."""
    return {(int(a), str(c)) for a, c in json.loads(unpack(doc["keys"]))}


def counts_of(doc: Mapping[str, Any]) -> RoundRollup:
    """The counts of a rollup_counts doc (the other parts left empty)."""
    out = RoundRollup()
    for a, c, s, re, n, w in json.loads(unpack(doc["rows"])):
        out.counts[(int(a), c, s, re)] = [int(n), float(w)]
    return out


def cells_of(doc: Mapping[str, Any]) -> RoundRollup:
    """The cells of a rollup_cells doc (the other parts left empty)."""
    out = RoundRollup()
    text = unpack(doc["cells"])
    for line in text.split("\n") if text else ():
        client, status, n = line.split("\t")
        out.cells[(_unescape(client), _unescape(status))] = int(n)
    return out


def clients_of(doc: Mapping[str, Any]) -> RoundRollup:
    """The client partials of a rollup_clients doc (the other parts left empty)."""
    return RoundRollup(clients=dict(client_partials(doc)))


def client_partials(doc: Mapping[str, Any]) -> Iterable[tuple[str, ClientPartial]]:
    """(client, partial) of a rollup_clients or rollup_client_blocks doc."""
    for row in json.loads(unpack(doc["clients"])):
        yield ClientPartial.decode(row)


def block_of(round: int) -> int:
    """The index of the block of BLOCK_ROUNDS rounds that holds `round` (from 0)."""
    return (round - 1) // BLOCK_ROUNDS


def block_rounds(block: int) -> tuple[int, int]:
    """The first and last round of `block`."""
    return block * BLOCK_ROUNDS + 1, (block + 1) * BLOCK_ROUNDS


def client_block_doc(
    job: str, block: int, merged: Mapping[int, str], partials: Mapping[str, ClientPartial]
) -> Doc:
    """The rollup_client_blocks document of the client rollups `merged` (round ->
    rollup id) of `block`."""
    ids = sorted(merged.items())
    digest = hashlib.sha256(encode_json(ids).encode()).hexdigest()[:16]
    return {
        "_id": encode_json([job, block, digest]),
        "job": job,
        "block": block,
        "merged": encode_json(ids),
        "clients": _dumps([p.encode(c) for c, p in sorted(partials.items())]),
    }


def merged_rollups(doc: Mapping[str, Any]) -> dict[int, str]:
    """round -> rollup id of the client rollups a rollup_client_blocks doc merged."""
    return {int(r): str(i) for r, i in json.loads(doc["merged"])}


def merge_clients(
    into: dict[str, ClientPartial], partials: Iterable[tuple[str, ClientPartial]]
) -> None:
    for client, p in partials:
        mine = into.get(client)
        if mine is None:
            into[client] = ClientPartial()
            mine = into[client]
        mine.merge(p)
