-- TimescaleDB (Apache-2 edition: hypertables, time_bucket, drop_chunks; no compression,
-- continuous aggregates or policies). The server needs shared_preload_libraries='timescaledb'
-- and the role running migrations must be allowed to create the extension (superuser locally).
CREATE EXTENSION IF NOT EXISTS timescaledb;
