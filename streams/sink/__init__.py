"""The DB sink: every result topic to TimescaleDB, idempotently."""
