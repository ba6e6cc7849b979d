"""MongoStateStore: the StateStore contract on MongoDB (or FerretDB) via pymongo.

Collections: jobs, rounds, progress, participants, updates, updates_recent,
legacy_rounds, events (with event_pages and event_blocks), clients, models,
commits, credentials, meta, and the round rollups (rollup_keys, rollup_cells,
rollup_clients, rollup_counts, rollup_client_blocks). Unique indexes make
every write idempotent (keys derive from job / round / attempt / client). No
multi-document transactions are used, so the store also works on a
standalone server.

Whatever concurrent writers may race on is decided by a single-document
insert against a unique index, never by the atomicity of an update: FerretDB
v1 (the MongoDB wire protocol on SQLite/PostgreSQL) applies an update as a
read-modify-write, so concurrent ``$inc`` or compare-and-set updates of one
document can be lost there (seen: 4 threads x 100 ``$inc`` gave 128).

- commit_round inserts one document ``{job, round, attempt, payload}`` into
  ``commits`` (unique on job+round). That single insert is the commit point:
  exactly one attempt per round can win it; a DuplicateKeyError means the
  round was committed before. The round document is updated afterwards, and
  readers overlay the commit payload, so a crash between the two writes loses
  nothing.
- event sequence numbers (per job): an event is inserted with the job's
  highest seq + 1; the unique (job, seq) index refuses a writer that lost the
  race, which then retries with the new highest.
- combiner progress of a running attempt: one document per (job, round,
  attempt, combiner) in ``progress``, so combiners never write the same
  document; readers merge them into ``RoundRecord.combiners``.

Free-form dicts (manifest, metrics, timings, validation, combiners) are stored
as JSON strings: their keys may contain '.' or start with '$' (Kubernetes
annotations, metric names), which MongoDB field names do not allow everywhere.

Built for FerretDB as much as for MongoDB. FerretDB v1 (SQLite handler, what
the tests and bench/dashboard_queries.py run) uses no index for any query, not
even ``_id`` lookups (its SQLite indexes are on another expression than its
queries), and decodes every document of a collection a query reads: ~50 us
per document, its ``$group`` slower still, with only ``$sum``/``$count`` as
accumulators and only the first accumulator of a ``$group`` computed (later
ones come out 0: pipelines here have one each). What the dashboard reads must
therefore live in collections with few documents, large values packed
(zlib-compressed) into single binary values:

- a committed attempt's participant list (1,000 client ids) is one packed JSON
  list in its own ``participants`` document (the commit payload names it by
  ``participants_id``, a fresh id per commit_round call, so a losing or
  repeated commit never mixes lists); get_rounds(participants=False) does not
  read that collection. Schema-2 documents keep their inline lists and are read
  as such.
- a committed attempt's ``progress`` documents are deleted after the commit
  (the commit payload's combiners replace them; a late one is ignored).
- events: see fedkube/state/mongo_events.py (an inbox plus archived pages of
  EVENT_BLOCK events).
- update records: the dashboard reads *round rollups* (mongo_rollups.py)
  instead, documents counting a round's records, built when it is committed.
  Correct under concurrent writers with inserts and deletes of copies only:

  1. record_update inserts the record into ``updates`` (the unique index
     refuses a duplicate, as before), then a *recent copy* of it into
     ``updates_recent`` (same ``_id``, the fields a rollup reads).
  2. after a commit, the committer reads every record of the round from
     ``updates`` and inserts their rollup: ``rollup_keys`` (the (attempt,
     client) of each record counted) first, then ``rollup_cells``,
     ``rollup_clients``, ``rollup_counts``, all under one ``_id`` derived from
     the round and those keys (the same records give the same documents; a
     concurrent writer's duplicate is ignored). Then it deletes the recent
     copies of the records it counted. A round's rollups only grow: each
     counts every record there was when it was built.
  3. a reader reads the round's recent copies first, then its rollups, and
     takes the latest rollup (the most records) plus the copies whose key it
     did not count (with none: the copies alone). Every record the rollup did
     not count was recorded after it was built, so its copy is there unless it
     was deleted, and only a rollup that counted it deletes it -- one inserted
     before the delete, so seen by the later read of rollups, and the latest.
  4. each commit also rolls up again (newest first, a few per commit) rounds
     that have copies left (late records, e.g. a deadline report that lands
     after the commit) and committed rounds without a rollup (a crash after
     the commit, or rounds of a store created before schema 3, which the
     upgrade lists in ``legacy_rounds``: until then those are read live from
     ``updates``).
  5. client_summaries would still merge 1,000 rounds x 1,000 clients, so a
     commit that completes a block of BLOCK_ROUNDS rounds (or rolls up a round
     of a past block again) also inserts the block's merged client rollups
     (``rollup_client_blocks``), naming the rollups it merged; a reader uses
     it while each of those is still its round's latest and the round has no
     copies.

  A record whose copy was not written (its writer died between the two
  inserts) is missing from the dashboard until its round is committed. A
  rollup is built by one read of the round's records: an index range scan on
  MongoDB, a scan of the whole updates collection on FerretDB (as
  list_updates is there). Reading a running round costs its copies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError

from fedkube.errors import StateError
from fedkube.logs import get_logger
from fedkube.state.base import (
    DEFAULT_DATABASE,
    JOB_FIELDS,
    JOB_JSON_FIELDS,
    MAX_UPDATE_MESSAGE,
    SCHEMA_VERSION,
    ClientRecord,
    ClientSummary,
    CredentialRecord,
    EventRecord,
    JobOverview,
    JobRecord,
    ModelRecord,
    ParticipationCell,
    RoundRecord,
    StateStore,
    UpdateCount,
    UpdateRecord,
    check_schema_version,
    encode_json,
    encode_json_fields,
    now,
)
from fedkube.state.mongo_events import EVENT_BLOCK, EventArchive, EventFilter
from fedkube.state.mongo_queries import DashboardQueries, RollupCollections, Rollups
from fedkube.state.mongo_rollups import pack, unpack
from fedkube.vocabulary import AttemptStatus

#: server selection timeout unless the URI sets serverSelectionTimeoutMS
DEFAULT_SERVER_SELECTION_MS = 10_000

_SENSITIVE_OPTION = re.compile(r"password|secret|token|authmechanismproperties", re.IGNORECASE)

_ROUND_JSON = frozenset({"metrics", "validation", "timings", "combiners"})
#: inserts an event may lose to concurrent writers before add_event gives up
_SEQ_RETRIES = 1000
_log = get_logger("state")

Doc = dict[str, Any]


def _defaults(record: type[Any], json_fields: frozenset[str]) -> Doc:
    """The fields of a record class that have a default, as stored (the JSON
    fields as text): what a new document holds before anything is set."""
    values: Doc = {}
    for f in dataclasses.fields(record):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return encode_json_fields(values, json_fields)


_JOB_DEFAULTS = _defaults(JobRecord, JOB_JSON_FIELDS)
_ROUND_DEFAULTS = _defaults(RoundRecord, _ROUND_JSON)


def redact_mongo_uri(uri: str) -> str:
    """`uri` without user:password@ and without secret-bearing options."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "mongodb://<unparsable URI>"
    netloc = parts.netloc.rsplit("@", 1)[1] if "@" in parts.netloc else parts.netloc
    query = urlencode(
        [
            (k, v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if not _SENSITIVE_OPTION.search(k)
        ]
    )
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def _scrub(message: str, uri: str) -> str:
    """`message` with the URI's userinfo (and its password alone) replaced by ***."""
    try:
        netloc = urlsplit(uri).netloc
    except ValueError:
        return message
    if "@" not in netloc:
        return message
    userinfo = netloc.rsplit("@", 1)[0]
    secrets = [userinfo, userinfo.split(":", 1)[-1], unquote(userinfo.split(":", 1)[-1])]
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


def _strip_id(doc: Doc) -> Doc:
    return {k: v for k, v in doc.items() if k != "_id"}


def _doc(rec: Any, **values: Any) -> Doc:
    """The document of record `rec` (a dataclass): its fields, `values` over them."""
    return {**dataclasses.asdict(rec), **values}


def _job(doc: Doc) -> JobRecord:
    d: Doc = {k: doc[k] for k in JOB_FIELDS if k in doc}
    for k in JOB_JSON_FIELDS:
        d[k] = json.loads(d.get(k) or "{}")
    return JobRecord(**d)


def _round(doc: Doc) -> RoundRecord:
    d: Doc = {**_ROUND_DEFAULTS, **_strip_id(doc)}
    for k in _ROUND_JSON:
        d[k] = json.loads(d[k] or "{}")
    d["participants"] = list(d["participants"] or [])  # a schema-2 inline list
    keys = ("job", "round", "attempt", *_ROUND_DEFAULTS)
    return RoundRecord(**{k: d[k] for k in keys})


class MongoStateStore(StateStore):
    """The StateStore contract on a MongoDB-compatible server.

    The connection is lazy: nothing touches the network until the first call
    (which also creates the indexes and checks the schema version).
    """

    def __init__(self, uri: str, database: str = DEFAULT_DATABASE) -> None:
        self.uri = redact_mongo_uri(uri)
        self.database = database or DEFAULT_DATABASE
        kwargs: dict[str, Any] = {"connect": False}
        if "serverselectiontimeoutms" not in uri.lower():
            kwargs["serverSelectionTimeoutMS"] = DEFAULT_SERVER_SELECTION_MS
        try:
            self._client: MongoClient[Doc] = MongoClient(uri, **kwargs)
        except (PyMongoError, ValueError, TypeError) as exc:
            raise StateError(f"bad mongodb URI {self.uri}: {_scrub(str(exc), uri)}") from exc
        db = self._client[self.database]
        self._jobs: Collection[Doc] = db["jobs"]
        self._rounds: Collection[Doc] = db["rounds"]
        self._progress: Collection[Doc] = db["progress"]
        self._updates: Collection[Doc] = db["updates"]
        self._events: Collection[Doc] = db["events"]
        self._clients: Collection[Doc] = db["clients"]
        self._models: Collection[Doc] = db["models"]
        self._commits: Collection[Doc] = db["commits"]
        self._credentials: Collection[Doc] = db["credentials"]
        self._meta: Collection[Doc] = db["meta"]
        self._participants: Collection[Doc] = db["participants"]
        self._archive = EventArchive(
            self._events, db["event_pages"], db["event_blocks"], EVENT_BLOCK
        )
        rc = RollupCollections.of(db)
        self._rollups = Rollups(rc)
        self._queries = DashboardQueries(rc)
        self._ready = False
        self._init_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MongoStateStore({self.uri!r}, database={self.database!r})"

    # ---- plumbing
    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except PyMongoError as exc:
            raise StateError(
                f"state store {self.uri} (database {self.database}): {what}: {exc}"
            ) from exc

    def _init(self) -> None:
        if self._ready:
            return
        with self._init_lock:
            if self._ready:
                return
            with self._errors("create indexes"):
                self._jobs.create_index([("name", ASCENDING)], unique=True)
                self._rounds.create_index(
                    [("job", ASCENDING), ("round", ASCENDING), ("attempt", ASCENDING)],
                    unique=True,
                )
                self._progress.create_index(
                    [
                        ("job", ASCENDING),
                        ("round", ASCENDING),
                        ("attempt", ASCENDING),
                        ("combiner", ASCENDING),
                    ],
                    unique=True,
                )
                self._updates.create_index(
                    [
                        ("job", ASCENDING),
                        ("round", ASCENDING),
                        ("attempt", ASCENDING),
                        ("client", ASCENDING),
                    ],
                    unique=True,
                )
                self._events.create_index([("job", ASCENDING), ("seq", ASCENDING)], unique=True)
                self._clients.create_index([("job", ASCENDING), ("client", ASCENDING)], unique=True)
                self._models.create_index([("job", ASCENDING), ("round", ASCENDING)], unique=True)
                self._commits.create_index([("job", ASCENDING), ("round", ASCENDING)], unique=True)
                self._credentials.create_index(
                    [("job", ASCENDING), ("token_id", ASCENDING)], unique=True
                )
                self._credentials.create_index([("digest", ASCENDING)], unique=True)
                self._participants.create_index([("job", ASCENDING), ("round", ASCENDING)])
                self._rollups.create_indexes()
                self._archive.blocks.create_index([("job", ASCENDING), ("first", ASCENDING)])
            with self._errors("check schema version"):
                with contextlib.suppress(DuplicateKeyError):
                    self._meta.update_one(
                        {"_id": "schema"},
                        {"$setOnInsert": {"version": SCHEMA_VERSION}},
                        upsert=True,
                    )
                doc = self._meta.find_one({"_id": "schema"})
            version = int((doc or {}).get("version", SCHEMA_VERSION))
            check_schema_version(f"{self.uri} (database {self.database})", version)
            if version < SCHEMA_VERSION:
                with self._errors("upgrade schema version"):
                    self._upgrade(version)
                    self._meta.update_one(
                        {"_id": "schema", "version": {"$lt": SCHEMA_VERSION}},
                        {"$set": {"version": SCHEMA_VERSION}},
                    )
            self._ready = True

    def _upgrade(self, version: int) -> None:
        """Bring an older store's documents up to SCHEMA_VERSION (idempotent: a
        process that stops half-way leaves the version as it was, the next redoes it).

        Version 2 added fields with defaults (read as such from older documents)
        and the credentials collection: nothing to rewrite. Version 3 added
        UpdateRecord.train_s and .message (defaults again) and the documents the
        dashboard reads: the rounds of the existing records are listed in
        legacy_rounds (they have no recent copies; read live until a later commit
        rolls them up) and the complete blocks of old events are archived.
        Version 4 renamed UpdateRecord.sha256 to digest ("<algorithm>:<hex>").
        """
        if version < 3:
            self._upgrade_to_3()
        if version < 4:
            self._updates.update_many(
                {"sha256": {"$exists": True}}, {"$rename": {"sha256": "digest"}}
            )

    def _upgrade_to_3(self) -> None:
        for g in self._updates.aggregate(
            [{"$group": {"_id": {"job": "$job", "round": "$round"}, "n": {"$sum": 1}}}]
        ):
            self._rollups.register_legacy(g["_id"]["job"], int(g["_id"]["round"]))
        for g in self._events.aggregate([{"$group": {"_id": "$job", "n": {"$sum": 1}}}]):
            last = self._events.find_one({"job": g["_id"]}, sort=[("seq", DESCENDING)])
            if last is not None:
                newest = self._archive.first_of(int(last["seq"]))
                self._archive.archive(g["_id"], upto=newest - 1)

    def _upsert(self, coll: Collection[Doc], flt: Doc, update: Doc) -> None:
        """update_one(upsert=True), retried once: two concurrent upserts of the same
        new key can make one fail with DuplicateKeyError; the retry then updates."""
        try:
            coll.update_one(flt, update, upsert=True)
        except DuplicateKeyError:
            coll.update_one(flt, update, upsert=True)

    def close(self) -> None:
        self._client.close()

    # ---- jobs
    def create_job(self, name: str, manifest: dict[str, Any]) -> JobRecord:
        self._init()
        t = now()
        insert = {k: v for k, v in _JOB_DEFAULTS.items() if k != "updated_at"}  # $set has it
        insert["created_at"] = t
        update = {
            "$set": {"manifest": encode_json(manifest), "updated_at": t},
            "$setOnInsert": insert,
        }
        with self._errors(f"create job {name!r}"):
            self._upsert(self._jobs, {"name": name}, update)
            doc = self._jobs.find_one({"name": name})
        if doc is None:
            raise StateError(f"state store {self.uri}: job {name!r} vanished after create")
        return _job(doc)

    def get_job(self, name: str) -> JobRecord | None:
        self._init()
        with self._errors(f"get job {name!r}"):
            doc = self._jobs.find_one({"name": name})
        return _job(doc) if doc else None

    def list_jobs(self) -> list[JobRecord]:
        self._init()
        with self._errors("list jobs"):
            docs = list(self._jobs.find({}).sort("name", ASCENDING))
        return [_job(d) for d in docs]

    def _set_job(self, name: str, values: dict[str, Any]) -> JobRecord:
        self._init()
        with self._errors(f"update job {name!r}"):
            doc = self._jobs.find_one_and_update(
                {"name": name}, {"$set": values}, return_document=ReturnDocument.AFTER
            )
        if doc is None:
            raise StateError(f"update_job: no job {name!r}")
        return _job(doc)

    # ---- rounds
    @staticmethod
    def _key(job: str, round: int, attempt: int) -> Doc:
        return {"job": job, "round": round, "attempt": attempt}

    def _commit_of(self, job: str, round: int) -> Doc | None:
        return self._commits.find_one({"job": job, "round": round})

    def begin_attempt(self, job: str, round: int, attempt: int) -> RoundRecord:
        self._init()
        key = self._key(job, round, attempt)
        insert = dict(_ROUND_DEFAULTS)
        insert["started_at"] = now()
        with self._errors(f"begin attempt {attempt} of job {job!r} round {round}"):
            self._upsert(self._rounds, key, {"$setOnInsert": insert})
            doc = self._rounds.find_one(key)
            commit = self._commit_of(job, round)
            progress = list(self._progress.find(key))
            lists = self._list_of(commit)
        if doc is None:
            raise StateError(f"state store {self.uri}: attempt {key} vanished after insert")
        return self._overlay(doc, commit, progress, lists)

    def set_progress(
        self, job: str, round: int, attempt: int, combiner: str, progress: dict[str, Any]
    ) -> None:
        self._init()
        key = self._key(job, round, attempt)
        with self._errors(f"set progress of job {job!r} round {round} attempt {attempt}"):
            doc = self._rounds.find_one(key)
            if doc is None:
                raise StateError(
                    f"set_progress: job {job!r} round {round} has no attempt {attempt}"
                )
            if doc.get("status") != AttemptStatus.RUNNING:
                return  # a late report never changes a finished attempt
            commit = self._commit_of(job, round)
            if commit is not None and commit.get("attempt") == attempt:
                return  # committed (round document not yet updated)
            # One document per combiner: concurrent combiners never touch the same one.
            self._upsert(
                self._progress,
                {**key, "combiner": combiner},
                {"$set": {"progress": encode_json(progress)}},
            )

    def fail_attempt(self, job: str, round: int, attempt: int, reason: str) -> None:
        self._init()
        key = self._key(job, round, attempt)
        with self._errors(f"fail attempt {attempt} of job {job!r} round {round}"):
            doc = self._rounds.find_one(key)
            commit = self._commit_of(job, round)
            if commit is not None and commit.get("attempt") == attempt:
                self._apply_commit(commit)  # repair; a committed attempt never fails
                return
            if doc is None:
                raise StateError(
                    f"fail_attempt: job {job!r} round {round} has no attempt {attempt}"
                )
            self._rounds.update_one(
                {**key, "status": AttemptStatus.RUNNING},
                {"$set": {"status": AttemptStatus.FAILED, "reason": reason, "completed_at": now()}},
            )

    def _apply_commit(self, commit: Doc) -> None:
        """Write a commit document's payload to its round document (idempotent)."""
        key = self._key(commit["job"], commit["round"], commit["attempt"])
        payload = dict(commit.get("payload") or {})
        payload["status"] = AttemptStatus.COMPLETED
        on_insert = {
            k: v for k, v in _ROUND_DEFAULTS.items() if k not in payload and k != "started_at"
        }
        on_insert["started_at"] = payload.get("completed_at", now())
        self._upsert(self._rounds, key, {"$set": payload, "$setOnInsert": on_insert})

    def _commit_round(self, job: str, round: int, attempt: int, result: dict[str, Any]) -> bool:
        self._init()
        key = self._key(job, round, attempt)
        payload = encode_json_fields(result, _ROUND_JSON)
        participants = payload.pop("participants")
        with self._errors(f"commit job {job!r} round {round} attempt {attempt}"):
            existing = self._commit_of(job, round)
            if existing is not None:
                if existing.get("attempt") == attempt:
                    self._apply_commit(existing)  # finish a commit cut short by a crash
                    self._after_commit(job, round, attempt)
                return False
            doc = self._rounds.find_one(key)
            if doc is not None and doc.get("status") == AttemptStatus.FAILED:
                raise StateError(
                    f"commit_round: attempt {attempt} of job {job!r} round {round} already "
                    f"failed ({doc.get('reason', '')}); start a new attempt"
                )
            # The list first, under an id of this call only (the payload names it).
            pid = encode_json([job, round, attempt, uuid.uuid4().hex])
            self._participants.insert_one(
                {"_id": pid, **key, "participants": pack(encode_json(list(participants)))}
            )
            payload["participants_id"] = pid
            commit = {**key, "at": result["completed_at"], "payload": payload}
            try:
                self._commits.insert_one(commit)
            except DuplicateKeyError:
                existing = self._commit_of(job, round)
                if existing is not None and existing.get("attempt") == attempt:
                    self._apply_commit(existing)
                return False
            self._apply_commit(commit)
        self._after_commit(job, round, attempt)
        return True

    def _committed_rounds(self, job: str) -> set[int]:
        return {int(d["round"]) for d in self._commits.find({"job": job}, {"round": True})}

    def _after_commit(self, job: str, round: int, attempt: int) -> None:
        """Drop the committed attempt's progress documents and build the round's
        rollups (and repair a few earlier ones). Best effort: the commit stands
        whatever happens here; a round without a clean rollup is read live."""
        try:
            self._progress.delete_many(self._key(job, round, attempt))
            self._rollups.refresh(job, round, self._committed_rounds(job))
        except PyMongoError as exc:
            _log.warning(
                "cannot build the round's rollups; the dashboard reads its records",
                job=job,
                round=round,
                error=str(exc),
            )

    def set_validation(
        self, job: str, round: int, metrics: dict[str, float], num_examples: int
    ) -> None:
        self._init()
        with self._errors(f"set validation of job {job!r} round {round}"):
            commit = self._commit_of(job, round)
            if commit is None:
                raise StateError(f"set_validation: job {job!r} round {round} is not committed")
            self._apply_commit(commit)
            self._rounds.update_one(
                self._key(job, round, commit["attempt"]),
                {"$set": {"validation": encode_json(metrics), "validation_examples": num_examples}},
            )

    @staticmethod
    def _overlay(
        doc: Doc,
        commit: Doc | None,
        progress: list[Doc],
        participants: dict[str, list[str]] | None = None,
    ) -> RoundRecord:
        """The round record of `doc`: a commit of this attempt overrides it; else the
        attempt's per-combiner `progress` documents are merged into `combiners`.
        `participants` (participants_id -> list) fills a committed attempt's list;
        None leaves every list empty (get_rounds(participants=False))."""
        if commit is not None and commit.get("attempt") == doc.get("attempt"):
            doc = {**doc, **(commit.get("payload") or {}), "status": AttemptStatus.COMPLETED}
        elif progress:
            combiners = json.loads(doc.get("combiners") or "{}")
            for p in sorted(progress, key=lambda p: str(p["combiner"])):
                combiners[p["combiner"]] = json.loads(p.get("progress") or "{}")
            doc = {**doc, "combiners": encode_json(combiners)}
        if participants is None:
            doc = {**doc, "participants": []}
        elif "participants_id" in doc:
            doc = {**doc, "participants": participants.get(doc["participants_id"], [])}
        return _round(doc)

    def _list_of(self, commit: Doc | None) -> dict[str, list[str]]:
        """The participant list a commit names ({} for none or a schema-2 commit)."""
        pid = ((commit or {}).get("payload") or {}).get("participants_id")
        if not isinstance(pid, str):
            return {}
        doc = self._participants.find_one({"_id": pid})
        return {pid: json.loads(unpack(doc["participants"]))} if doc else {}

    def _participant_lists(self, job: str) -> dict[str, list[str]]:
        return {
            d["_id"]: json.loads(unpack(d["participants"]))
            for d in self._participants.find({"job": job})
        }

    def get_rounds(self, job: str, *, participants: bool = True) -> list[RoundRecord]:
        self._init()
        with self._errors(f"get rounds of job {job!r}"):
            # Schema-2 documents hold their lists inline: leave them out when unread.
            skip = None if participants else {"participants": False}
            docs = list(self._rounds.find({"job": job}, skip))
            skip = None if participants else {"payload.participants": False}
            commits = {c["round"]: c for c in self._commits.find({"job": job}, skip)}
            progress: dict[tuple[int, int], list[Doc]] = {}
            for p in self._progress.find({"job": job}):
                progress.setdefault((p["round"], p["attempt"]), []).append(p)
            lists = self._participant_lists(job) if participants else None
        seen = {(d["round"], d["attempt"]) for d in docs}
        # A commit whose round document was never written still counts.
        for c in commits.values():
            if (c["round"], c["attempt"]) not in seen:
                docs.append(
                    {**self._key(job, c["round"], c["attempt"]), "started_at": c.get("at", 0.0)}
                )
        records = [
            self._overlay(
                d, commits.get(d["round"]), progress.get((d["round"], d["attempt"]), []), lists
            )
            for d in docs
        ]
        records.sort(key=lambda r: (r.round, r.attempt))
        return records

    def last_committed_round(self, job: str) -> int:
        self._init()
        with self._errors(f"last committed round of job {job!r}"):
            doc = self._commits.find_one({"job": job}, sort=[("round", DESCENDING)])
        return int(doc["round"]) if doc else 0

    # ---- updates
    def record_update(self, rec: UpdateRecord) -> bool:
        """Insert the record, then its recent copy (see the module docstring)."""
        self._init()
        doc = _doc(rec, at=rec.at or now(), message=rec.message[:MAX_UPDATE_MESSAGE])
        with self._errors(f"record update of client {rec.client!r}"):
            try:
                self._updates.insert_one(doc)  # sets doc["_id"]
            except DuplicateKeyError:
                return False
        with self._errors(
            f"record update of client {rec.client!r}: recorded, but missing from the "
            f"dashboard's counts until round {rec.round} is committed"
        ):
            self._rollups.copy(doc)
        return True

    def list_updates(self, job: str, round: int | None = None) -> list[UpdateRecord]:
        self._init()
        flt: Doc = {"job": job}
        if round is not None:
            flt["round"] = round
        with self._errors(f"list updates of job {job!r}"):
            docs = list(
                self._updates.find(flt).sort(
                    [("round", ASCENDING), ("attempt", ASCENDING), ("client", ASCENDING)]
                )
            )
        return [UpdateRecord(**_strip_id(d)) for d in docs]

    # ---- aggregate queries (the dashboard): rollups and pipelines in mongo_queries.py
    def job_overviews(self) -> list[JobOverview]:
        self._init()
        with self._errors("job overviews"):
            return self._queries.job_overviews(_job)

    def count_updates(
        self, job: str, *, round_from: int | None = None, round_to: int | None = None
    ) -> list[UpdateCount]:
        self._init()
        with self._errors(f"count updates of job {job!r}"):
            return self._queries.count_updates(job, round_from, round_to)

    def participation(
        self, job: str, *, clients: Sequence[str], round_from: int, round_to: int
    ) -> list[ParticipationCell]:
        self._init()
        with self._errors(f"participation in job {job!r}"):
            return self._queries.participation(job, clients, round_from, round_to)

    def client_summaries(self, job: str) -> list[ClientSummary]:
        self._init()
        with self._errors(f"client summaries of job {job!r}"):
            return self._queries.client_summaries(job)

    def query_events(
        self,
        job: str,
        *,
        kinds: Sequence[str] = (),
        levels: Sequence[str] = (),
        round: int | None = None,
        client: str | None = None,
        combiner: str | None = None,
        before_seq: int | None = None,
        limit: int = 200,
    ) -> list[EventRecord]:
        self._init()
        with self._errors(f"query events of job {job!r}"):
            docs = self._archive.query(
                job, EventFilter(kinds, levels, round, client, combiner, before_seq), limit
            )
        return [EventRecord(**d) for d in docs]

    def count_events(self, job: str) -> dict[str, int]:
        self._init()
        with self._errors(f"count events of job {job!r}"):
            return self._archive.count(job)

    # ---- events
    def add_event(self, ev: EventRecord) -> None:
        """Append `ev`. Sequence numbers are per job (1, 2, 3, ...): the event is
        inserted with the job's highest seq + 1, and the unique (job, seq) index
        makes a writer that lost a race retry. An event given with a seq that
        already exists is ignored (idempotent replay). The first event of a new
        block archives the blocks before it (mongo_events.py)."""
        self._init()
        doc = _doc(ev, at=ev.at or now())
        with self._errors(f"add event to job {ev.job!r}"):
            if ev.seq:
                if not self._archive.is_archived(ev.job, ev.seq):
                    with contextlib.suppress(DuplicateKeyError):
                        self._events.insert_one({**doc, "seq": ev.seq})
                return
            seq = self._insert_event(doc)
        try:
            self._archive.after_insert(ev.job, seq)
        except PyMongoError as exc:  # the event is in; its block is archived later
            _log.warning("cannot archive events", job=ev.job, seq=seq, error=str(exc))

    def _insert_event(self, doc: Doc) -> int:
        """Insert `doc` with the job's next seq; return the seq."""
        job = doc["job"]
        for _ in range(_SEQ_RETRIES):
            last = self._events.find_one(
                {"job": job}, sort=[("seq", DESCENDING)], projection={"seq": True}
            )
            seq = int(last["seq"]) + 1 if last else 1
            try:
                res = self._events.insert_one({**doc, "seq": seq})
            except DuplicateKeyError:
                time.sleep(random.random() * 0.002)  # lost the race: spread the retries
                continue
            if not self._archive.is_archived(job, seq):
                return seq
            # Our highest seq was stale: meanwhile that seq was taken, its block
            # archived and its inbox copy deleted, so the unique index let ours in.
            self._events.delete_one({"_id": res.inserted_id})
        raise StateError(
            f"add_event: job {doc['job']!r}: gave up after {_SEQ_RETRIES} concurrent inserts "
            "won the same sequence numbers"
        )

    def list_events(
        self, job: str, *, since_seq: int = 0, limit: int | None = None
    ) -> list[EventRecord]:
        if limit is not None and limit <= 0:
            return []
        self._init()
        with self._errors(f"list events of job {job!r}"):
            docs = self._archive.read(
                job,
                {},
                lambda e: True,
                newest_first=False,
                limit=limit,
                seq_range=(since_seq, None),
            )
        return [EventRecord(**d) for d in docs]

    # ---- clients
    def upsert_client(self, rec: ClientRecord) -> None:
        self._init()
        update = {
            "$set": {
                "combiner": rec.combiner,
                "status": rec.status,
                "last_seen": rec.last_seen or now(),
            },
            "$max": {"participations": rec.participations},
        }
        with self._errors(f"upsert client {rec.client!r}"):
            self._upsert(self._clients, {"job": rec.job, "client": rec.client}, update)

    def list_clients(self, job: str) -> list[ClientRecord]:
        self._init()
        with self._errors(f"list clients of job {job!r}"):
            docs = list(self._clients.find({"job": job}).sort("client", ASCENDING))
        return [ClientRecord(**_strip_id(d)) for d in docs]

    # ---- credentials
    def add_credential(self, rec: CredentialRecord) -> None:
        self._init()
        doc = _doc(rec, issued_at=rec.issued_at or now())
        with self._errors(f"add credential of client {rec.client!r}"):
            self._credentials.insert_one(doc)

    def list_credentials(self, job: str) -> list[CredentialRecord]:
        self._init()
        with self._errors(f"list credentials of job {job!r}"):
            docs = list(
                self._credentials.find({"job": job}).sort(
                    [("client", ASCENDING), ("issued_at", ASCENDING)]
                )
            )
        return [CredentialRecord(**_strip_id(d)) for d in docs]

    def revoke_credentials(
        self, job: str, client: str, token_id: str | None = None, *, at: float | None = None
    ) -> int:
        self._init()
        flt: Doc = {"job": job, "client": client, "revoked_at": None}
        if token_id is not None:
            flt["token_id"] = token_id
        with self._errors(f"revoke credentials of client {client!r}"):
            res = self._credentials.update_many(flt, {"$set": {"revoked_at": at or now()}})
        return int(res.modified_count)

    # ---- models
    def add_model(self, rec: ModelRecord) -> None:
        self._init()
        doc = _doc(rec, created_at=rec.created_at or now())
        with self._errors(f"add model of job {rec.job!r} round {rec.round}"):
            flt = {"job": rec.job, "round": rec.round}
            try:
                self._models.replace_one(flt, doc, upsert=True)
            except DuplicateKeyError:
                self._models.replace_one(flt, doc, upsert=True)

    def get_model(self, job: str, round: int | None = None) -> ModelRecord | None:
        self._init()
        with self._errors(f"get model of job {job!r}"):
            if round is None:
                doc = self._models.find_one({"job": job}, sort=[("round", DESCENDING)])
            else:
                doc = self._models.find_one({"job": job, "round": round})
        return ModelRecord(**_strip_id(doc)) if doc else None

    def list_models(self, job: str) -> list[ModelRecord]:
        self._init()
        with self._errors(f"list models of job {job!r}"):
            docs = list(self._models.find({"job": job}).sort("round", ASCENDING))
        return [ModelRecord(**_strip_id(d)) for d in docs]


__all__ = ["MongoStateStore", "redact_mongo_uri"]
