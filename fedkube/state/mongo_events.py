"""Events of the MongoDB store: an inbox of single documents, and complete
blocks of them archived as pages.

Why: on FerretDB v1 every query decodes the whole collection it reads, so a
job's newest 200 events out of 20,000 cost as much as all 20,000 (~1 s).
Here the ``events`` collection is an inbox: add_event inserts one document
per event (the unique (job, seq) index decides seq races, as before), and
once a block of EVENT_BLOCK consecutive seqs is complete and a later event
exists, the block moves to one page document:

- ``event_pages``: ``{_id, job, first, last, events}``, the block's events as
  JSON text, compressed (one small value: cheap to decode);
- ``event_blocks``: ``{_id, job, first, last, kinds, levels}``, the block's
  counts per kind and per level (JSON text), written after its page: a block
  document is the mark that the block is archived.

Then the block's inbox documents are deleted. The inbox keeps the job's
newest block and so its highest seq, from which add_event takes the next one.

Rules that keep reads exact while a block moves:

- a page and its block document are built from the complete block only (all
  EVENT_BLOCK seqs present; seqs are unique per job, so it never changes);
  writing them again gives the same documents (duplicates are ignored);
- readers ignore inbox documents whose seq lies in an archived block (left
  over by an archiver that stopped before deleting, or an explicit-seq
  replay racing it) and read those events from the page;
- readers read the block list, then the inbox, then the block list again,
  and retry when a block was archived in between (the inbox documents they
  read may be gone, but then the page is there);
- a writer whose highest seq was stale may get a seq of a block archived
  meanwhile into the inbox (its copy there was deleted, so the unique index
  lets it in): after each insert add_event checks that the seq's block is
  not archived, and else deletes its document and takes the next seq again.

Archiving happens in add_event when its event is the first of a new block
(about once per EVENT_BLOCK events), and repairs older complete blocks left
in the inbox on the way (a store upgraded from schema 2 archives its history
then). The inbox and the pages are read by EventArchive.read (query_events,
list_events) and EventArchive.count (count_events).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from fedkube.state.base import encode_json
from fedkube.state.mongo_rollups import pack, unpack

Doc = dict[str, Any]

#: consecutive seqs archived together in one page
EVENT_BLOCK = 1000
#: the fields of an event in a page, in this order
PAGE_FIELDS = ("seq", "kind", "message", "level", "round", "attempt", "client", "combiner", "at")
#: block list changes a read tolerates before it gives up
_READ_RETRIES = 5


def block_key(job: str, first: int) -> str:
    return encode_json([job, first])


@dataclass(frozen=True)
class Block:
    first: int
    last: int
    kinds: Mapping[str, int]
    levels: Mapping[str, int]

    def holds(self, seq: int) -> bool:
        return self.first <= seq <= self.last


def merged_ranges(blocks: list[Block]) -> list[tuple[int, int]]:
    """The blocks' seq ranges, adjacent ones merged, ascending."""
    out: list[tuple[int, int]] = []
    for b in sorted(blocks, key=lambda b: b.first):
        if out and b.first == out[-1][1] + 1:
            out[-1] = (out[-1][0], b.last)
        else:
            out.append((b.first, b.last))
    return out


def not_archived(blocks: list[Block]) -> Doc:
    """A filter term excluding the seqs of `blocks` ({} when there are none)."""
    ranges = merged_ranges(blocks)
    if not ranges:
        return {}
    return {"$nor": [{"seq": {"$gte": lo, "$lte": hi}} for lo, hi in ranges]}


def page_doc(job: str, events: list[Doc]) -> tuple[Doc, Doc]:
    """The page and block documents of one complete block of inbox documents."""
    first, last = events[0]["seq"], events[-1]["seq"]
    key = {"_id": block_key(job, first), "job": job, "first": first, "last": last}
    rows = [[e.get(f) for f in PAGE_FIELDS] for e in events]
    kinds = Counter(str(e.get("kind")) for e in events)
    levels = Counter(str(e.get("level")) for e in events)
    page = {**key, "events": pack(json.dumps(rows, separators=(",", ":")))}
    block = {**key, "kinds": encode_json(dict(kinds)), "levels": encode_json(dict(levels))}
    return page, block


def page_events(job: str, page: Mapping[str, Any]) -> list[Doc]:
    """The event documents of a page (as the inbox holds them, without _id)."""
    rows = json.loads(unpack(page["events"]))
    return [{"job": job, **dict(zip(PAGE_FIELDS, row, strict=True))} for row in rows]


@dataclass(frozen=True)
class EventFilter:
    """query_events' filters (an empty sequence or None filters nothing)."""

    kinds: Sequence[str] = ()
    levels: Sequence[str] = ()
    round: int | None = None
    client: str | None = None
    combiner: str | None = None
    before_seq: int | None = None

    def mongo(self) -> Doc:
        """The filter terms (besides job and seq) of the inbox query."""
        flt: Doc = {}
        if self.kinds:
            flt["kind"] = {"$in": list(self.kinds)}
        if self.levels:
            flt["level"] = {"$in": list(self.levels)}
        for name, value in (
            ("round", self.round),
            ("client", self.client),
            ("combiner", self.combiner),
        ):
            if value is not None:
                flt[name] = value
        return flt

    def match(self, e: Mapping[str, Any]) -> bool:
        """The same test as mongo(), on an event document of a page."""
        return (
            (not self.kinds or e.get("kind") in self.kinds)
            and (not self.levels or e.get("level") in self.levels)
            and (self.round is None or e.get("round") == self.round)
            and (self.client is None or e.get("client") == self.client)
            and (self.combiner is None or e.get("combiner") == self.combiner)
        )

    def may_hold(self, b: Block) -> bool:
        """False when the block's counts rule out a match (its page is not read)."""
        return (not self.kinds or any(b.kinds.get(k) for k in self.kinds)) and (
            not self.levels or any(b.levels.get(x) for x in self.levels)
        )


class EventArchive:
    """The inbox (`events`), the pages and their block list of one database."""

    def __init__(
        self,
        inbox: Collection[Doc],
        pages: Collection[Doc],
        blocks: Collection[Doc],
        block_size: int = EVENT_BLOCK,
    ) -> None:
        self.inbox, self.pages, self.blocks = inbox, pages, blocks
        self.block_size = block_size

    def first_of(self, seq: int) -> int:
        """The first seq of the block holding `seq`."""
        return (seq - 1) // self.block_size * self.block_size + 1

    # ---- writes
    def is_archived(self, job: str, seq: int) -> bool:
        return self.blocks.find_one({"_id": block_key(job, self.first_of(seq))}) is not None

    def after_insert(self, job: str, seq: int) -> None:
        """Called after add_event inserted `seq`: the first of a block archives the
        blocks before it."""
        if seq > self.block_size and (seq - 1) % self.block_size == 0:
            self.archive(job, upto=seq - 1)

    def archive(self, job: str, upto: int) -> int:
        """Archive every complete block of the job's inbox events with seq <= upto
        (and delete what archived blocks left in the inbox); returns how many
        blocks were archived now."""
        known = {b.first for b in self.list_blocks(job)}
        by_block: dict[int, list[Doc]] = {}
        for e in self.inbox.find({"job": job, "seq": {"$lte": upto}}, {"_id": False}).sort(
            "seq", ASCENDING
        ):
            by_block.setdefault(self.first_of(int(e["seq"])), []).append(e)
        archived = 0
        for first, events in sorted(by_block.items()):
            last = first + self.block_size - 1
            if first not in known:
                if len({e["seq"] for e in events}) != self.block_size:
                    continue  # a gap (an explicit seq jumped ahead): stays in the inbox
                page, block = page_doc(job, events)
                for coll, doc in ((self.pages, page), (self.blocks, block)):
                    # archived by another writer meanwhile: the same document
                    with contextlib.suppress(DuplicateKeyError):
                        coll.insert_one(doc)
                archived += 1
            self.inbox.delete_many({"job": job, "seq": {"$gte": first, "$lte": last}})
        return archived

    # ---- reads
    def list_blocks(self, job: str) -> list[Block]:
        out = [
            Block(
                int(d["first"]),
                int(d["last"]),
                json.loads(d.get("kinds") or "{}"),
                json.loads(d.get("levels") or "{}"),
            )
            for d in self.blocks.find({"job": job})
        ]
        out.sort(key=lambda b: b.first)
        return out

    def _stable(self, job: str, read: Callable[[list[Block]], Any]) -> tuple[list[Block], Any]:
        """`read(blocks)` of the inbox, with a block list that did not change while
        it ran (see the module docstring)."""
        blocks = self.list_blocks(job)
        for _ in range(_READ_RETRIES):
            got = read(blocks)
            again = self.list_blocks(job)
            if again == blocks:
                return blocks, got
            blocks = again
        raise RuntimeError(f"events of job {job!r}: blocks archived during every read attempt")

    def read(
        self,
        job: str,
        flt: Doc,
        match: Callable[[Doc], bool],
        *,
        newest_first: bool,
        limit: int | None,
        seq_range: tuple[int | None, int | None] = (None, None),
        may_hold: Callable[[Block], bool] = lambda b: True,
    ) -> list[Doc]:
        """Event documents of `job` matching the inbox filter `flt` (and `match`, the
        same test in Python, for paged events), with lo < seq < hi for
        ``seq_range=(lo, hi)``, sorted by seq, at most `limit`. `may_hold(block)`
        False skips a page without reading it (its counts rule out a match)."""
        lo, hi = seq_range
        seq: Doc = {}
        if lo is not None:
            seq["$gt"] = lo
        if hi is not None:
            seq["$lt"] = hi
        order = DESCENDING if newest_first else ASCENDING

        def inbox(blocks: list[Block]) -> list[Doc]:
            q: Doc = {"job": job, **flt, **not_archived(blocks)}
            if seq:
                q["seq"] = seq
            cur = self.inbox.find(q, {"_id": False}).sort("seq", order)
            if limit is not None:
                cur = cur.limit(limit)
            return list(cur)

        blocks, found = self._stable(job, inbox)
        picked = [b for b in blocks if (lo is None or b.last > lo) and (hi is None or b.first < hi)]
        for b in self._page_order(picked, newest_first):
            if limit is not None and _beyond(found, b, newest_first) >= limit:
                break
            if not may_hold(b):
                continue
            page = self.pages.find_one({"_id": block_key(job, b.first)})
            if page is None:
                continue  # unreachable: a block document is written after its page
            for e in page_events(job, page):
                s = int(e["seq"])
                if (lo is None or s > lo) and (hi is None or s < hi) and match(e):
                    found.append(e)
        found.sort(key=lambda e: int(e["seq"]), reverse=newest_first)
        return found if limit is None else found[:limit]

    def query(self, job: str, where: EventFilter, limit: int) -> list[Doc]:
        """query_events: the newest `limit` events matching `where`."""
        if limit <= 0:
            return []
        return self.read(
            job,
            where.mongo(),
            where.match,
            newest_first=True,
            limit=limit,
            seq_range=(None, where.before_seq),
            may_hold=where.may_hold,
        )

    @staticmethod
    def _page_order(blocks: list[Block], newest_first: bool) -> Iterator[Block]:
        return reversed(blocks) if newest_first else iter(blocks)

    def count(self, job: str) -> dict[str, int]:
        """The job's events per kind: the blocks' counts plus the inbox grouped."""

        def inbox(blocks: list[Block]) -> list[Doc]:
            return list(
                self.inbox.aggregate(
                    [
                        {"$match": {"job": job, **not_archived(blocks)}},
                        {"$group": {"_id": "$kind", "n": {"$sum": 1}}},
                    ]
                )
            )

        blocks, grouped = self._stable(job, inbox)
        total: Counter[str] = Counter()
        for b in blocks:
            total.update(b.kinds)
        for g in grouped:
            total[g["_id"]] += int(g["n"])
        return {k: n for k, n in total.items() if n}


def _beyond(found: list[Doc], block: Block, newest_first: bool) -> int:
    """How many of `found` come before every event of `block` in the read order."""
    if newest_first:
        return sum(1 for e in found if int(e["seq"]) > block.last)
    return sum(1 for e in found if int(e["seq"]) < block.first)
