"""The in-memory unread counts (homeserver.handlers.notification_cache): loads wait for the
persist lock, changes after a kept load are followed in place, and a load that overlapped a
receipt's drop is not kept."""

import asyncio

from homeserver.handlers.notification_cache import CountsCache

R = "!room:x"


class Store:
    """A stand-in for the database: counts per user, and loads that can be held mid-way."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.loads = 0
        self.gate: asyncio.Event | None = None

    async def load(self, user_id: str) -> dict:
        self.loads += 1
        snapshot = dict(self.rows.get(user_id, {}))
        if self.gate is not None:
            await self.gate.wait()
        return snapshot


async def test_kept_load_is_followed_by_changes():
    cache, db, lock = CountsCache(), Store(), asyncio.Lock()
    db.rows["@a"] = {R: (2, 0)}
    assert await cache.get("@a", db.load, lock) == {R: (2, 0)}
    db.rows["@a"] = {R: (3, 1)}
    cache.add(R, "@a", 1, 1)
    assert await cache.get("@a", db.load, lock) == {R: (3, 1)}
    assert db.loads == 1  # answered from memory
    db.rows["@a"] = {}
    cache.clear(R, "@a")  # her own message
    assert await cache.get("@a", db.load, lock) == {}
    cache.forget("@a")  # a receipt: read again
    assert await cache.get("@a", db.load, lock) == {} and db.loads == 2


async def test_load_waits_for_an_event_being_persisted():
    cache, db, lock = CountsCache(), Store(), asyncio.Lock()
    async with lock:  # an event: committed, its increments not applied yet
        db.rows["@a"] = {R: (1, 0)}
        task = asyncio.ensure_future(cache.get("@a", db.load, lock))
        await asyncio.sleep(0)
        assert db.loads == 0
        cache.add(R, "@a", 1, 0)  # not cached yet: nothing to follow
    assert await task == {R: (1, 0)}
    cache.add(R, "@a", 1, 0)  # the next event
    assert await cache.get("@a", db.load, lock) == {R: (2, 0)} and db.loads == 1


async def test_load_overlapping_a_receipt_is_not_kept():
    cache, db, lock = CountsCache(), Store(), asyncio.Lock()
    db.rows["@a"] = {R: (4, 0)}
    db.gate = asyncio.Event()
    task = asyncio.ensure_future(cache.get("@a", db.load, lock))
    await asyncio.sleep(0)  # the load has read 4 and waits
    db.rows["@a"] = {}
    cache.forget("@a")  # the receipt committed and dropped the entry
    db.gate.set()
    assert await task == {R: (4, 0)}  # this response is a step behind …
    db.gate = None
    assert await cache.get("@a", db.load, lock) == {}  # … but it was not kept


async def test_forgotten_stamps_keep_loads_safe():
    cache, db, lock = CountsCache(stamps=2), Store(), asyncio.Lock()
    db.rows["@a"] = {R: (1, 0)}
    db.gate = asyncio.Event()
    task = asyncio.ensure_future(cache.get("@a", db.load, lock))
    await asyncio.sleep(0)
    db.rows["@a"] = {}
    for u in ("@a", "@b", "@c", "@d"):  # @a's drop, then its stamp pushed out
        cache.forget(u)
    db.gate.set()
    await task
    db.gate = None
    assert await cache.get("@a", db.load, lock) == {}
