"""The round rollups of the MongoDB store: their writes (Rollups) and the
dashboard's aggregate queries that read them (DashboardQueries).

A query over update records takes each round from

- its latest rollup (fedkube/state/mongo_rollups.py), plus the round's
  *recent copies* (``updates_recent``) that rollup did not count: records
  recorded after it was built (a late report after the commit);
- its recent copies alone when it has no rollup yet (the running round);
- a pipeline over its records in ``updates`` only for a round written before
  schema 3 that no commit has rolled up yet (the ``legacy_rounds`` registry
  the upgrade fills).

So a job whose rounds are all rolled up reads no update record, and a running
round costs its own copies: what keeps FerretDB (no index use) fast. The
rules that make this exact are told in the module docstring of
fedkube/state/mongo.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from fedkube.state.base import (
    ClientSummary,
    JobOverview,
    JobRecord,
    ParticipationCell,
    UpdateCount,
)
from fedkube.state.mongo_rollups import (
    ROLLUPS,
    UPDATE_FIELDS,
    ClientPartial,
    RoundRollup,
    block_of,
    block_rounds,
    cells_of,
    client_block_doc,
    client_partials,
    clients_of,
    counts_of,
    keys_of,
    latest,
    merge_clients,
    merged_rollups,
    rollup_docs,
)
from fedkube.vocabulary import ClientStatus

Doc = dict[str, Any]

#: rounds whose missing rollup a commit builds besides its own (newest first)
ROLLUP_REPAIRS = 3


def round_filter(round_from: int | None, round_to: int | None) -> Doc:
    """The filter term of rounds round_from..round_to ({} when neither is given)."""
    term: Doc = {}
    if round_from is not None:
        term["$gte"] = round_from
    if round_to is not None:
        term["$lte"] = round_to
    return {"round": term} if term else {}


@dataclass
class RollupCollections:
    """The collections the rollups' writes and the dashboard's queries use."""

    jobs: Collection[Doc]
    clients: Collection[Doc]
    updates: Collection[Doc]
    recent: Collection[Doc]
    legacy: Collection[Doc]
    rollups: dict[str, Collection[Doc]]  # by name, in ROLLUPS order
    client_blocks: Collection[Doc]

    @classmethod
    def of(cls, db: Database[Doc]) -> RollupCollections:
        return cls(
            jobs=db["jobs"],
            clients=db["clients"],
            updates=db["updates"],
            recent=db["updates_recent"],
            legacy=db["legacy_rounds"],
            rollups={name: db[name] for name in ROLLUPS},
            client_blocks=db["rollup_client_blocks"],
        )


class Rollups:
    """The writes: recent copies, rollups, client blocks, the legacy registry."""

    def __init__(self, c: RollupCollections) -> None:
        self.c = c

    def create_indexes(self) -> None:
        for coll in (self.c.recent, self.c.legacy, *self.c.rollups.values()):
            coll.create_index([("job", ASCENDING), ("round", ASCENDING)])
        self.c.client_blocks.create_index([("job", ASCENDING), ("block", ASCENDING)])

    def copy(self, doc: Doc) -> None:
        """A recent copy of the update record `doc` just inserted (same `_id`)."""
        with contextlib.suppress(DuplicateKeyError):
            self.c.recent.insert_one({k: doc[k] for k in ("_id", "job", *UPDATE_FIELDS)})

    def register_legacy(self, job: str, round: int) -> None:
        """Note that `round` has records written before schema 3 (no copies)."""
        with contextlib.suppress(DuplicateKeyError):
            self.c.legacy.insert_one({"_id": f"{job}\x1f{round}", "job": job, "round": round})

    def roll_up(self, job: str, round: int) -> None:
        """Count every record of the round now in a new rollup, then drop the
        recent copies of the records it counted (in this order: see mongo.py)."""
        projection = {f: True for f in UPDATE_FIELDS}
        docs = list(self.c.updates.find({"job": job, "round": round}, projection))
        for name, doc in rollup_docs(job, round, RoundRollup.of(docs)).items():
            with contextlib.suppress(DuplicateKeyError):
                self.c.rollups[name].insert_one(doc)
        if docs:
            self.c.recent.delete_many({"_id": {"$in": [d["_id"] for d in docs]}})

    def refresh(self, job: str, round: int, committed: set[int]) -> None:
        """Roll up the just committed `round`, then up to ROLLUP_REPAIRS other rounds
        (newest first) that have recent copies left (late records) or were committed
        without a rollup (a crash after the commit, or before schema 3), then merge
        the client blocks the job has moved past that hold one of them."""
        self.roll_up(job, round)
        rolled = {
            int(d["round"])
            for d in self.c.rollups["rollup_counts"].find({"job": job}, {"round": True})
        }
        copied = {int(d["round"]) for d in self.c.recent.find({"job": job}, {"round": True})}
        todo = ((copied & rolled) | (committed - rolled)) - {round}
        repaired = sorted(todo, reverse=True)[:ROLLUP_REPAIRS]
        for r in repaired:
            self.roll_up(job, r)
        for block in sorted({block_of(r) for r in (round, *repaired)}):
            if block_rounds(block)[1] <= round:
                self.merge_block(job, block)

    def merge_block(self, job: str, block: int) -> None:
        """Insert the rollup_client_blocks document merging the latest client
        rollups of `block`'s rounds that have no recent copies."""
        lo, hi = block_rounds(block)
        rng = {"job": job, "round": {"$gte": lo, "$lte": hi}}
        copied = {int(d["round"]) for d in self.c.recent.find(rng, {"round": True})}
        docs = latest(self.c.rollups["rollup_clients"].find(rng))
        merged = {r: d for r, d in docs.items() if r not in copied}
        if not merged:
            return
        partials: dict[str, ClientPartial] = {}
        for d in merged.values():
            merge_clients(partials, client_partials(d))
        ids = {r: str(d["_id"]) for r, d in merged.items()}
        with contextlib.suppress(DuplicateKeyError):
            self.c.client_blocks.insert_one(client_block_doc(job, block, ids, partials))


@dataclass
class Rounds:
    """Where a query takes each round from (DashboardQueries._rounds)."""

    #: round -> its rollup, with the recent copies it did not count added
    rolled: dict[int, RoundRollup]
    #: the rounds written before schema 3 and not rolled up: read from `updates`
    legacy: list[int]


class DashboardQueries:
    """count_updates, participation, client_summaries and job_overviews of
    MongoStateStore (the event queries are mongo_events.EventArchive's)."""

    def __init__(self, c: RollupCollections) -> None:
        self.c = c

    def _rounds(
        self,
        job: str,
        rng: Doc,
        kind: str,
        decode: Callable[[Doc], RoundRollup],
        skip: Callable[[int], bool] = lambda r: False,
    ) -> Rounds:
        """Each round of `job` within `rng` (but those `skip` says) as its latest
        `kind` rollup (decoded) plus its recent copies that rollup did not count, or
        its copies alone; legacy rounds apart. The copies are read before the
        rollups: a copy deleted meanwhile belongs to a rollup the read then sees."""
        copies: dict[int, list[Doc]] = {}
        for d in self.c.recent.find({"job": job, **rng}):
            copies.setdefault(int(d["round"]), []).append(d)
        docs = latest(self.c.rollups[kind].find({"job": job, **rng}))
        rolled: dict[int, RoundRollup] = {}
        for r, d in docs.items():
            if skip(r):
                continue
            rollup = decode(d)
            if r in copies:
                counted = keys_of(self._keys(d["_id"]))
                for u in copies.pop(r):
                    if (int(u["attempt"]), u["client"]) not in counted:
                        rollup.add(u)
            rolled[r] = rollup
        for r, us in copies.items():
            if not skip(r):
                rolled[r] = RoundRollup.of(us)
        legacy = {
            int(d["round"])
            for d in self.c.legacy.find({"job": job, **rng}, {"round": True})
            if not skip(int(d["round"]))
        }
        return Rounds(rolled, sorted(legacy - rolled.keys()))

    def _keys(self, rollup: str) -> Doc:
        doc = self.c.rollups["rollup_keys"].find_one({"_id": rollup})
        if doc is None:  # unreachable: a rollup's keys are inserted first
            raise LookupError(f"rollup {rollup} has no keys document")
        return doc

    def _group(self, match: Doc, keys: Sequence[str], value: Any) -> dict[tuple[Any, ...], Any]:
        """``$sum`` of `value` over the update records matching `match`, grouped by
        `keys`. One accumulator per pipeline: FerretDB v1.24 computes only the
        first accumulator of a $group (the others see an exhausted group: 0)."""
        pipeline = [
            {"$match": match},
            {"$group": {"_id": {k: f"${k}" for k in keys}, "v": {"$sum": value}}},
        ]
        return {
            tuple(g["_id"].get(k) for k in keys): g["v"] for g in self.c.updates.aggregate(pipeline)
        }

    # ---- the queries
    def job_overviews(self, job_of: Callable[[Doc], JobRecord]) -> list[JobOverview]:
        """`job_of` makes a JobRecord of a jobs document."""
        counts: dict[tuple[str, str], int] = {}
        for g in self.c.clients.aggregate(
            [{"$group": {"_id": {"job": "$job", "status": "$status"}, "n": {"$sum": 1}}}]
        ):
            counts[(g["_id"]["job"], g["_id"]["status"])] = int(g["n"])
        out = []
        for d in self.c.jobs.find({}).sort("name", ASCENDING):
            job = job_of(d)
            mine = {s: n for (j, s), n in counts.items() if j == job.name}
            out.append(JobOverview(job, sum(mine.values()), mine.get(ClientStatus.CONNECTED, 0)))
        return out

    def count_updates(
        self, job: str, round_from: int | None, round_to: int | None
    ) -> list[UpdateCount]:
        rounds = self._rounds(job, round_filter(round_from, round_to), "rollup_counts", counts_of)
        rows = [
            (r, a, c, s, re, int(n), float(w))
            for r, rollup in rounds.rolled.items()
            for (a, c, s, re), (n, w) in rollup.counts.items()
        ]
        if rounds.legacy:
            match = {"job": job, "round": {"$in": rounds.legacy}}
            keys = ("round", "attempt", "combiner", "status", "reason")
            n, w = self._group(match, keys, 1), self._group(match, keys, "$weight")
            for k, count in n.items():
                r, a, c, st, re = k
                rows.append((int(r), int(a), c, st, re or "", int(count), float(w.get(k, 0.0))))
        rows.sort(key=lambda r: r[:5])
        return [UpdateCount(*r) for r in rows]

    def participation(
        self, job: str, clients: Sequence[str], round_from: int, round_to: int
    ) -> list[ParticipationCell]:
        if not clients:
            return []
        want = set(clients)
        rounds = self._rounds(job, round_filter(round_from, round_to), "rollup_cells", cells_of)
        out = [
            (client, r, status, n)
            for r, rollup in rounds.rolled.items()
            for (client, status), n in rollup.cells.items()
            if client in want
        ]
        if rounds.legacy:
            match = {"job": job, "client": {"$in": sorted(want)}, "round": {"$in": rounds.legacy}}
            for (client, r, status), n in self._group(
                match, ("client", "round", "status"), 1
            ).items():
                out.append((client, int(r), status, int(n)))
        out.sort(key=lambda c: c[:3])
        return [ParticipationCell(*c) for c in out]

    def client_summaries(self, job: str) -> list[ClientSummary]:
        """Merged per client: the client blocks still exact, then every other round
        as _rounds gives it, then the legacy rounds' records."""
        records = list(self.c.clients.find({"job": job}).sort("client", ASCENDING))
        partials: dict[str, ClientPartial] = {}
        covered = self._blocks(job, partials)
        rounds = self._rounds(job, {}, "rollup_clients", clients_of, skip=covered.__contains__)
        for rollup in rounds.rolled.values():
            merge_clients(partials, rollup.clients.items())
        if rounds.legacy:
            by_round: dict[int, list[Doc]] = {}
            projection = {f: True for f in UPDATE_FIELDS}
            for u in self.c.updates.find({"job": job, "round": {"$in": rounds.legacy}}, projection):
                by_round.setdefault(int(u["round"]), []).append(u)
            for docs in by_round.values():
                merge_clients(partials, RoundRollup.of(docs).clients.items())
        return [_summary(rec, partials.get(rec["client"], ClientPartial())) for rec in records]

    def _blocks(self, job: str, partials: dict[str, ClientPartial]) -> set[int]:
        """Merge into `partials` the client blocks whose every round is still exactly
        what they merged (that rollup is its latest and it has no recent copies);
        return the rounds they cover. Read copies, then rollups, then blocks."""
        copied = {int(d["round"]) for d in self.c.recent.find({"job": job}, {"round": True})}
        ids = {
            r: d["_id"]
            for r, d in latest(
                self.c.rollups["rollup_counts"].find({"job": job}, {"round": True, "n": True})
            ).items()
        }
        best: dict[int, tuple[dict[int, str], Doc]] = {}
        for d in self.c.client_blocks.find({"job": job}):
            merged = merged_rollups(d)
            exact = all(ids.get(r) == i and r not in copied for r, i in merged.items())
            if exact and len(merged) > len(best.get(int(d["block"]), ({}, d))[0]):
                best[int(d["block"])] = (merged, d)
        covered: set[int] = set()
        for merged, d in best.values():
            merge_clients(partials, client_partials(d))
            covered |= merged.keys()
        return covered


def _summary(rec: Doc, p: ClientPartial) -> ClientSummary:
    return ClientSummary(
        client=rec["client"],
        combiner=rec["combiner"],
        status=rec["status"],
        last_seen=rec["last_seen"],
        participations=rec.get("participations", 0),
        rounds=p.rounds,
        accepted=p.accepted,
        rejected=p.rejected,
        failed=p.failed,
        mean_train_s=p.train_sum / p.train_n if p.train_n else None,
        last_error=p.err_text if p.err_key is not None else "",
        last_error_at=p.err_key[0] if p.err_key is not None else None,
    )


__all__ = ["DashboardQueries", "RollupCollections", "Rollups"]
