"""Precomputed study-level QIDO answers, kept current by a trigger.

Most study searches return the default attributes of PS3.18 Table 10.6.3-3 (or all of
them): building those objects for every page is PostgreSQL's largest cost. Each study
row instead stores both answers as JSON text (columns ``qido`` and ``qido_all``, migration
005), RetrieveURL under the base-URL marker, and a search sends the stored text.

The trigger's SQL comes from the compiler that builds every other answer
(:func:`app.index.compiler.study_fragment_sql`), so the two cannot drift. It is
(re)created at start-up; when its text changes (a new Pictor version), every study's
fragments are rebuilt once, under the migrations' advisory lock.
"""

from __future__ import annotations

import hashlib
import logging

import asyncpg

from app.index.compiler import study_fragment_sql

log = logging.getLogger("pictor.index")

_SETTING = "study_fragments_sql"


def trigger_sql() -> str:
    default = study_fragment_sql(all_attributes=False)
    everything = study_fragment_sql(all_attributes=True)
    return f"""
CREATE OR REPLACE FUNCTION pictor_study_fragments() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    SELECT ({default})::text, ({everything})::text
      INTO NEW.qido, NEW.qido_all
      FROM (SELECT NEW.*) st;
    RETURN NEW;
END
$fn$;
DROP TRIGGER IF EXISTS study_fragments ON study;
CREATE TRIGGER study_fragments BEFORE INSERT OR UPDATE ON study
    FOR EACH ROW EXECUTE FUNCTION pictor_study_fragments();
"""


async def install(conn: asyncpg.Connection) -> int:
    """Create or refresh the trigger; rebuild the stored answers if its SQL changed.
    Returns the number of studies rebuilt. Call under the migrations' lock."""
    sql = trigger_sql()
    digest = hashlib.sha256(sql.encode()).hexdigest()
    current = await conn.fetchval("SELECT value FROM pictor_setting WHERE name = $1", _SETTING)
    if current == digest:
        return 0
    async with conn.transaction():
        await conn.execute(sql)
        # an UPDATE that changes nothing fires the trigger: every row is rebuilt
        status = await conn.execute("UPDATE study SET qido = NULL")
        await conn.execute(
            "INSERT INTO pictor_setting (name, value) VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            _SETTING,
            digest,
        )
    rebuilt = int(status.split()[-1])
    if rebuilt:
        log.info("rebuilt the stored QIDO answers of %d studies", rebuilt)
        # every row was rewritten: without a vacuum the visibility map is empty and the
        # searches' index-only scans visit the table for every key until autovacuum runs
        await conn.execute("VACUUM (ANALYZE) study")
    return rebuilt
