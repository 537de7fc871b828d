"""TimescaleDB adapter of CityStream: migrations, the idempotent batch writer, retention.

::

    migrate.py      SQL files in migrations/ applied in order, recorded in schema_migrations
    tables.py       TableSpec of every hypertable the sink writes (columns, natural key)
    rows.py         schema messages -> row tuples for those tables
    copy_writer.py  CopyWriter: COPY -> staging -> INSERT ... ON CONFLICT DO NOTHING
    retention.py    drop_old_chunks / RetentionScheduler (drop_chunks; Apache edition)

Import from the submodules (``from citystream.db.copy_writer import CopyWriter``); this
package module imports nothing, so ``python -m citystream.db.migrate`` stays clean.
"""
