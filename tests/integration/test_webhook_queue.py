"""The webhooks' outbox on a real PostgreSQL (app.index.webhooks): which deliveries a
claim leases, in which order, and that a backlog neither reorders a study's events nor
lets a study's failed delivery be overtaken (issue #17: at least once, in order per
study and receiver)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from app.bootstrap import prepare
from app.config import load_settings
from app.index import webhooks as outbox
from app.index.database import EmbeddedPostgres, create_pool


async def _outbox(tmp_path: Path) -> tuple[EmbeddedPostgres, Any]:
    pg = EmbeddedPostgres(tmp_path / "pg")
    dsn = await asyncio.to_thread(pg.start)
    await prepare(load_settings({"data_dir": str(tmp_path / "data")}, environ={}), dsn)
    return pg, await create_pool(dsn, min_size=1, max_size=4)


async def _hook(pool: Any, name: str) -> int:
    async with pool.acquire() as conn:
        return await outbox.add(conn, f"http://127.0.0.1:9/{name}", ["instance.created"], None)


async def _queue(pool: Any, items: list[tuple[int, str]]) -> list[int]:
    """Deliveries (webhook, study) in this order; their ids."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """INSERT INTO webhook_delivery (webhook_id, event_id, event_type, study_uid, body)
               SELECT h, gen_random_uuid(), 'instance.created', s, convert_to(o::text, 'UTF8')
                 FROM unnest($1::int[], $2::text[]) WITH ORDINALITY AS x(h, s, o)
                ORDER BY o RETURNING id""",
            [h for h, _ in items],
            [s for _, s in items],
        )
        # as the event maker queues them (app.index.webhooks.make_events)
        await conn.execute(
            """INSERT INTO webhook_queue (webhook_id, study_uid)
               SELECT DISTINCT * FROM unnest($1::int[], $2::text[]) ON CONFLICT DO NOTHING""",
            [h for h, _ in items],
            [s for _, s in items],
        )
    return [r["id"] for r in rows]


def _runs(claimed: list[list[outbox.Due]]) -> list[tuple[int, list[int]]]:
    return [(run[0].webhook_id, [d.id for d in run]) for run in claimed]


def test_claims_lease_each_study_head_with_its_followers_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        pg, pool = await _outbox(tmp_path)
        try:
            one, two, slow = [await _hook(pool, n) for n in ("one", "two", "slow")]
            ids = await _queue(
                pool,
                [(one, "A"), (two, "A"), (one, "B"), (one, "A"), (two, "A"), (one, "B"),
                 (one, "A"), (slow, "C")],
            )  # fmt: skip
            # the webhook with no room gets nothing; the others a run per study, oldest head first
            claimed = await outbox.claim(pool, 10, 60, room={slow: 0})
            assert _runs(claimed) == [
                (one, [ids[0], ids[3], ids[6]]),
                (two, [ids[1], ids[4]]),
                (one, [ids[2], ids[5]]),
            ]
            assert [d.body for d in claimed[0]] == [b"1", b"4", b"7"]
            # leased heads: nothing more to claim, followers wait behind their head
            assert _runs(await outbox.claim(pool, 10, 60, room={slow: 0})) == []
            # study A of "one": the first delivered, the second failed and backed off;
            # the third never overtakes it, also once the others are done
            await outbox.finish(pool, one, "A", [(ids[0], 204)], (ids[3], 500, "HTTP 500", 3600))
            await outbox.finish(pool, two, "A", [(ids[1], 204), (ids[4], 204)], None)
            assert _runs(await outbox.claim(pool, 10, 60)) == [(slow, [ids[7]])]
            # a late event of a study queued behind a backed-off delivery waits too
            [late] = await _queue(pool, [(one, "A")])
            assert _runs(await outbox.claim(pool, 10, 60)) == []
            # once due again, the failed delivery leads its study's run, in order
            async with pool.acquire() as conn:
                await conn.execute(
                    "UPDATE webhook_queue SET next_at = now() WHERE webhook_id = $1 AND study_uid = 'A'",
                    one,
                )
            [run] = await outbox.claim(pool, 10, 60)
            assert [d.id for d in run] == [ids[3], ids[6], late]
            assert run[0].attempts == 2  # this is its second attempt
        finally:
            await pool.close()
            await asyncio.to_thread(pg.stop)

    asyncio.run(scenario())


def test_a_backlog_is_claimed_oldest_first_study_by_study(tmp_path: Path) -> None:
    """Thousands of pending deliveries over hundreds of studies (a receiver that was
    away): each claim leases whole runs of pairs, every study's run in order, and
    draining it all delivers each delivery exactly once."""

    async def scenario() -> None:
        pg, pool = await _outbox(tmp_path)
        try:
            hooks = [await _hook(pool, n) for n in ("a", "b")]
            items = [(hooks[i % 2], f"S{(i // 2) % 300}") for i in range(3000)]
            ids = await _queue(pool, items)
            study_of = dict(zip(ids, items, strict=True))
            first = await outbox.claim(pool, 16, 60)
            assert len(first) == 16
            for run in first:  # a pair's whole run, from its first pending delivery
                assert [d.id for d in run] == [i for i in ids if study_of[i] == study_of[run[0].id]]
            # a webhook takes no more runs than it has room for, even in one claim
            capped = await outbox.claim(pool, 16, 60, room={hooks[0]: 2}, per_hook=5)
            assert [run[0].webhook_id for run in capped].count(hooks[0]) == 2
            assert [run[0].webhook_id for run in capped].count(hooks[1]) == 5
            seen: list[int] = []
            claimed = first + capped
            while claimed:
                for run in claimed:
                    assert [d.id for d in run] == sorted(d.id for d in run)
                    assert len({study_of[d.id] for d in run}) == 1  # one webhook, one study
                    await outbox.finish(
                        pool, run[0].webhook_id, run[0].study_uid, [(d.id, 204) for d in run], None
                    )
                    seen += [d.id for d in run]
                claimed = await outbox.claim(pool, 16, 60)
            assert sorted(seen) == ids  # every delivery once
            for key in {study_of[i] for i in ids}:  # and each study's in order
                mine = [i for i in seen if study_of[i] == key]
                assert mine == sorted(mine)
        finally:
            await pool.close()
            await asyncio.to_thread(pg.stop)

    asyncio.run(scenario())


def test_an_event_queued_while_its_study_finishes_is_not_stranded(tmp_path: Path) -> None:
    """The event maker queues a delivery for a study whose last pending one is being
    finished: the finish waits for the maker's queue row, sees its delivery, and keeps
    the study queued and due (else the delivery would wait forever)."""

    async def scenario() -> None:
        pg, pool = await _outbox(tmp_path)
        try:
            hook = await _hook(pool, "race")
            [first] = await _queue(pool, [(hook, "R")])
            [run] = await outbox.claim(pool, 10, 60)
            maker = await pool.acquire()
            transaction = maker.transaction()
            await transaction.start()
            # what make_events writes for a new event of the study, not yet committed
            late = await maker.fetchval(
                """INSERT INTO webhook_delivery (webhook_id, event_id, event_type, study_uid, body)
                   VALUES ($1, gen_random_uuid(), 'instance.created', 'R', 'late')
                   RETURNING id""",
                hook,
            )
            await maker.execute(
                """INSERT INTO webhook_queue (webhook_id, study_uid) VALUES ($1, 'R')
                   ON CONFLICT (webhook_id, study_uid) DO UPDATE SET next_at = webhook_queue.next_at""",
                hook,
            )
            finishing = asyncio.ensure_future(outbox.finish(pool, hook, "R", [(first, 204)], None))
            await asyncio.sleep(0.5)
            assert not finishing.done()  # it waits for the maker's queue row
            await transaction.commit()
            await pool.release(maker)
            await finishing
            [again] = await outbox.claim(pool, 10, 60)
            assert [d.id for d in again] == [late] and run[0].id == first
        finally:
            await pool.close()
            await asyncio.to_thread(pg.stop)

    asyncio.run(scenario())


def test_the_migration_queues_what_was_pending(tmp_path: Path) -> None:
    """``020_webhook_queue`` on an archive with deliveries pending: each (webhook,
    study) is queued, due when its first pending delivery was, and claimed as before."""
    import shutil

    from app.index.database import apply_migrations, migrations

    async def scenario() -> None:
        pg = EmbeddedPostgres(tmp_path / "pg")
        dsn = await asyncio.to_thread(pg.start)
        before = tmp_path / "schemas-019"
        before.mkdir()
        for version, path in migrations():
            if version < 20:
                shutil.copy(path, before / path.name)
        pool = await create_pool(dsn, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                await apply_migrations(conn, before)
                hook = await outbox.add(conn, "http://127.0.0.1:9/old", ["instance.created"], None)
                await conn.execute(
                    """INSERT INTO webhook_delivery
                           (webhook_id, event_id, event_type, study_uid, body, next_at)
                       VALUES ($1, gen_random_uuid(), 'instance.created', 'A', 'a1',
                               now() + interval '1 hour'),
                              ($1, gen_random_uuid(), 'instance.created', 'A', 'a2', now()),
                              ($1, gen_random_uuid(), 'instance.created', 'B', 'b1', now())""",
                    hook,
                )
                assert await apply_migrations(conn) == [20]
                queued = await conn.fetch(
                    "SELECT study_uid, next_at > now() AS later FROM webhook_queue ORDER BY 1"
                )
            # A waits for its backed-off first delivery; B is due
            assert [(r["study_uid"], r["later"]) for r in queued] == [("A", True), ("B", False)]
            [run] = await outbox.claim(pool, 10, 60)
            assert [d.body for d in run] == [b"b1"]
        finally:
            await pool.close()
            await asyncio.to_thread(pg.stop)

    asyncio.run(scenario())
