-- pupsourcing event store schema for postgres.
-- The Go library pupsourcing's tables, columns and indexes, so Go and Python
-- services can share one store, plus nullable columns the Go library ignores:
--   partition_hash: FNV-1a 32-bit hash of aggregate_id, so partitioned projections filter in SQL (NULL in rows the Go library wrote; those are filtered in Python).
--   metadata_raw: The metadata exactly as appended, kept only when the JSON column reformats it (key order, spacing), so reads return the caller's bytes.
-- The table aggregate_snapshots (aggregate snapshots) is pupsourcing's
-- own; the Go library ignores it.
-- So is projection_leases (leases of `projections run --claim` partitions
-- and of the relay copy that publishes).

-- Events: the append-only log. global_position orders all events; the unique key allows one event per aggregate version (optimistic concurrency).
CREATE TABLE IF NOT EXISTS "events" (
    global_position BIGSERIAL PRIMARY KEY,
    bounded_context TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version BIGINT NOT NULL,
    event_id UUID NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    event_version INT NOT NULL DEFAULT 1,
    payload BYTEA NOT NULL,
    trace_id TEXT,
    correlation_id TEXT,
    causation_id TEXT,
    metadata JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    partition_hash BIGINT,
    metadata_raw TEXT,
    UNIQUE (bounded_context, aggregate_type, aggregate_id, aggregate_version)
);

-- Reading one aggregate's stream.
CREATE INDEX IF NOT EXISTS "idx_events_aggregate"
    ON "events" (bounded_context, aggregate_type, aggregate_id, aggregate_version);

-- Reading events of one type in order.
CREATE INDEX IF NOT EXISTS "idx_events_event_type"
    ON "events" (event_type, global_position);

-- Following a correlation id.
CREATE INDEX IF NOT EXISTS "idx_events_correlation"
    ON "events" (correlation_id) WHERE correlation_id IS NOT NULL;

-- FNV-1a 32-bit hash of aggregate_id, so partitioned projections filter in SQL (NULL in rows the Go library wrote; those are filtered in Python). Added here to tables created by the Go library.
ALTER TABLE "events" ADD COLUMN IF NOT EXISTS partition_hash BIGINT;

-- The metadata exactly as appended, kept only when the JSON column reformats it (key order, spacing), so reads return the caller's bytes. Added here to tables created by the Go library.
ALTER TABLE "events" ADD COLUMN IF NOT EXISTS metadata_raw TEXT;

-- Aggregate heads: the current version of each aggregate, checked and bumped by every append.
CREATE TABLE IF NOT EXISTS "aggregate_heads" (
    bounded_context TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
);

-- Finding rows by last change.
CREATE INDEX IF NOT EXISTS "idx_aggregate_heads_updated"
    ON "aggregate_heads" (updated_at);

-- Projection checkpoints: the last global position each projection handled.
CREATE TABLE IF NOT EXISTS "projection_checkpoints" (
    projection_name TEXT PRIMARY KEY,
    last_global_position BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- Finding rows by last change.
CREATE INDEX IF NOT EXISTS "idx_projection_checkpoints_updated"
    ON "projection_checkpoints" (updated_at);

-- Projection dead letters (pupsourcing only; the Go library ignores this table): what a projection set aside after its handler failed on it max_attempts times, with the error, under the projection's checkpoint name.
CREATE TABLE IF NOT EXISTS "projection_dead_letters" (
    projection_name TEXT NOT NULL,
    global_position BIGINT NOT NULL,
    event_id UUID NOT NULL,
    error_type TEXT NOT NULL,
    error_message TEXT NOT NULL,
    traceback TEXT NOT NULL,
    attempts INT NOT NULL,
    failed_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (projection_name, global_position)
);

-- Projection partition layouts (pupsourcing only; the Go library ignores this table): the total_partitions each projection's checkpoints were made with, so a processor started with another count stops before it handles anything.
CREATE TABLE IF NOT EXISTS "projection_layouts" (
    projection_name TEXT PRIMARY KEY,
    total_partitions INT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- Aggregate snapshots (pupsourcing only; the Go library ignores this table): an aggregate's state at a version, so loading it replays only what came after.
CREATE TABLE IF NOT EXISTS "aggregate_snapshots" (
    bounded_context TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version BIGINT NOT NULL,
    schema_version INT NOT NULL,
    state BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id, aggregate_version)
);

-- Projection partition leases (pupsourcing only; the Go library ignores this table): which process runs which partition under `projections run --claim`, and which copy of a relay publishes, until expires_at (epoch seconds, database clock).
CREATE TABLE IF NOT EXISTS "projection_leases" (
    projection_name TEXT NOT NULL,
    partition_key BIGINT NOT NULL,
    owner TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    heartbeat DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (projection_name, partition_key)
);
