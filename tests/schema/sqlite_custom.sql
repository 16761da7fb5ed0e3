-- pupsourcing event store schema for sqlite.
-- The Go library pupsourcing's tables, columns and indexes, so Go and Python
-- services can share one store, plus nullable columns the Go library ignores:
--   partition_hash: FNV-1a 32-bit hash of aggregate_id, so partitioned projections filter in SQL (NULL in rows the Go library wrote; those are filtered in Python).
-- Tables created by the Go library lack them; pupsourcing's create_schema()
-- adds them, or run once:
--   ALTER TABLE "shop_events" ADD COLUMN partition_hash INTEGER;
-- The table aggregate_snapshots (aggregate snapshots) is pupsourcing's
-- own; the Go library ignores it.
-- So is projection_leases (leases of `projections run --claim` partitions
-- and of the relay copy that publishes).

-- Events: the append-only log. global_position orders all events; the unique key allows one event per aggregate version (optimistic concurrency).
CREATE TABLE IF NOT EXISTS "shop_events" (
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    bounded_context TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version INTEGER NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    event_version INTEGER NOT NULL DEFAULT 1,
    payload BLOB NOT NULL,
    trace_id TEXT,
    correlation_id TEXT,
    causation_id TEXT,
    metadata TEXT,
    created_at TEXT NOT NULL DEFAULT (datetime('now')),
    partition_hash INTEGER,
    UNIQUE (bounded_context, aggregate_type, aggregate_id, aggregate_version)
);

-- Reading one aggregate's stream.
CREATE INDEX IF NOT EXISTS "idx_shop_events_aggregate"
    ON "shop_events" (bounded_context, aggregate_type, aggregate_id, aggregate_version);

-- Reading events of one type in order.
CREATE INDEX IF NOT EXISTS "idx_shop_events_event_type"
    ON "shop_events" (event_type, global_position);

-- Following a correlation id.
CREATE INDEX IF NOT EXISTS "idx_shop_events_correlation"
    ON "shop_events" (correlation_id) WHERE correlation_id IS NOT NULL;

-- Aggregate heads: the current version of each aggregate, checked and bumped by every append.
CREATE TABLE IF NOT EXISTS "shop_heads" (
    bounded_context TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version INTEGER NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (datetime('now')),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
);

-- Finding rows by last change.
CREATE INDEX IF NOT EXISTS "idx_shop_heads_updated"
    ON "shop_heads" (updated_at);

-- Projection checkpoints: the last global position each projection handled.
CREATE TABLE IF NOT EXISTS "shop_checkpoints" (
    projection_name TEXT PRIMARY KEY,
    last_global_position INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL DEFAULT (datetime('now'))
);

-- Finding rows by last change.
CREATE INDEX IF NOT EXISTS "idx_shop_checkpoints_updated"
    ON "shop_checkpoints" (updated_at);

-- Projection dead letters (pupsourcing only; the Go library ignores this table): what a projection set aside after its handler failed on it max_attempts times, with the error, under the projection's checkpoint name.
CREATE TABLE IF NOT EXISTS "projection_dead_letters" (
    projection_name TEXT NOT NULL,
    global_position INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    error_type TEXT NOT NULL,
    error_message TEXT NOT NULL,
    traceback TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at TEXT NOT NULL DEFAULT (datetime('now')),
    PRIMARY KEY (projection_name, global_position)
);

-- Projection partition layouts (pupsourcing only; the Go library ignores this table): the total_partitions each projection's checkpoints were made with, so a processor started with another count stops before it handles anything.
CREATE TABLE IF NOT EXISTS "projection_layouts" (
    projection_name TEXT PRIMARY KEY,
    total_partitions INTEGER NOT NULL,
    recorded_at TEXT NOT NULL DEFAULT (datetime('now'))
);

-- Aggregate snapshots (pupsourcing only; the Go library ignores this table): an aggregate's state at a version, so loading it replays only what came after.
CREATE TABLE IF NOT EXISTS "aggregate_snapshots" (
    bounded_context TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    state BLOB NOT NULL,
    created_at TEXT NOT NULL DEFAULT (datetime('now')),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id, aggregate_version)
);

-- Projection partition leases (pupsourcing only; the Go library ignores this table): which process runs which partition under `projections run --claim`, and which copy of a relay publishes, until expires_at (epoch seconds, database clock).
CREATE TABLE IF NOT EXISTS "projection_leases" (
    projection_name TEXT NOT NULL,
    partition_key INTEGER NOT NULL,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL,
    heartbeat REAL NOT NULL,
    PRIMARY KEY (projection_name, partition_key)
);

-- Partition 0 of 4: the processor with partition_key=0, total_partitions=4 reads its events through this index.
CREATE INDEX IF NOT EXISTS "idx_shop_events_part4_0"
    ON "shop_events" (global_position) WHERE (partition_hash % 4 = 0 OR partition_hash IS NULL);

-- Partition 1 of 4: the processor with partition_key=1, total_partitions=4 reads its events through this index.
CREATE INDEX IF NOT EXISTS "idx_shop_events_part4_1"
    ON "shop_events" (global_position) WHERE (partition_hash % 4 = 1 OR partition_hash IS NULL);

-- Partition 2 of 4: the processor with partition_key=2, total_partitions=4 reads its events through this index.
CREATE INDEX IF NOT EXISTS "idx_shop_events_part4_2"
    ON "shop_events" (global_position) WHERE (partition_hash % 4 = 2 OR partition_hash IS NULL);

-- Partition 3 of 4: the processor with partition_key=3, total_partitions=4 reads its events through this index.
CREATE INDEX IF NOT EXISTS "idx_shop_events_part4_3"
    ON "shop_events" (global_position) WHERE (partition_hash % 4 = 3 OR partition_hash IS NULL);

CREATE TABLE IF NOT EXISTS "shop_events" (
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    bounded_context TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version INTEGER NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    event_version INTEGER NOT NULL DEFAULT 1,
    payload BLOB NOT NULL,
    trace_id TEXT,
    correlation_id TEXT,
    causation_id TEXT,
    metadata TEXT,
    created_at TEXT NOT NULL DEFAULT (datetime('now')),
    partition_hash INTEGER,
    UNIQUE (bounded_context, aggregate_type, aggregate_id, aggregate_version)
);
CREATE INDEX IF NOT EXISTS "idx_shop_events_aggregate"
    ON "shop_events" (bounded_context, aggregate_type, aggregate_id, aggregate_version);
CREATE INDEX IF NOT EXISTS "idx_shop_events_event_type"
    ON "shop_events" (event_type, global_position);
CREATE INDEX IF NOT EXISTS "idx_shop_events_correlation"
    ON "shop_events" (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS "shop_heads" (
    bounded_context TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version INTEGER NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (datetime('now')),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
);
CREATE INDEX IF NOT EXISTS "idx_shop_heads_updated"
    ON "shop_heads" (updated_at);
CREATE TABLE IF NOT EXISTS "shop_checkpoints" (
    projection_name TEXT PRIMARY KEY,
    last_global_position INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL DEFAULT (datetime('now'))
);
CREATE INDEX IF NOT EXISTS "idx_shop_checkpoints_updated"
    ON "shop_checkpoints" (updated_at);
CREATE TABLE IF NOT EXISTS "projection_dead_letters" (
    projection_name TEXT NOT NULL,
    global_position INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    error_type TEXT NOT NULL,
    error_message TEXT NOT NULL,
    traceback TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at TEXT NOT NULL DEFAULT (datetime('now')),
    PRIMARY KEY (projection_name, global_position)
);
CREATE TABLE IF NOT EXISTS "projection_layouts" (
    projection_name TEXT PRIMARY KEY,
    total_partitions INTEGER NOT NULL,
    recorded_at TEXT NOT NULL DEFAULT (datetime('now'))
);
CREATE TABLE IF NOT EXISTS "aggregate_snapshots" (
    bounded_context TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    aggregate_version INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    state BLOB NOT NULL,
    created_at TEXT NOT NULL DEFAULT (datetime('now')),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id, aggregate_version)
);
CREATE TABLE IF NOT EXISTS "projection_leases" (
    projection_name TEXT NOT NULL,
    partition_key INTEGER NOT NULL,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL,
    heartbeat REAL NOT NULL,
    PRIMARY KEY (projection_name, partition_key)
);
