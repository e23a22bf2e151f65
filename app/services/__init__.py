"""What Pictor does, one use case a function or class: ingest, search, retrieve (and,
to come, lifecycle, worklists, events). The transports (HTTP in ``app.dicomweb`` and
``app.main``, DIMSE in ``app.dimse``, the CLI) parse the wire and render answers; they
call these and never the index's SQL. Services use the ports below them: ``app.index``
(PostgreSQL), ``app.storage`` (blobs) and ``app.codec`` (pixels)."""
