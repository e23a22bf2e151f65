"""The PostgreSQL index: schema migrations, ingest writes, and (later) the QIDO compiler.

Only this package imports asyncpg.
"""
