"""The PostgreSQL index: schema migrations, ingest writes, retrieve reads, the QIDO
query model and its compiler, access control's tables, change notification.

Only this package imports asyncpg.
"""
