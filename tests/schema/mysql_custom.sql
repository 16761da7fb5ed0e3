-- pupsourcing event store schema for mysql.
-- The Go library pupsourcing's tables, columns and indexes, so Go and Python
-- services can share one store, plus nullable columns the Go library ignores:
--   partition_hash: FNV-1a 32-bit hash of aggregate_id, so partitioned projections filter in SQL (NULL in rows the Go library wrote; those are filtered in Python).
-- Tables created by the Go library lack them; pupsourcing's create_schema()
-- adds them, or run once:
--   ALTER TABLE `shop_events` ADD COLUMN partition_hash BIGINT;
-- The table aggregate_snapshots (aggregate snapshots) is pupsourcing's
-- own; the Go library ignores it.
-- So is projection_leases (leases of `projections run --claim` partitions
-- and of the relay copy that publishes).
-- Key columns use utf8mb4_bin: the Go library's utf8mb4_unicode_ci treats
-- distinct ids as equal (case, accents, all emoji), so two aggregates would
-- share one version sequence. The Go library works unchanged with it. To fix
-- tables the Go library created, run once:
--   ALTER TABLE `shop_events` MODIFY bounded_context VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
--   ALTER TABLE `shop_events` MODIFY aggregate_type VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
--   ALTER TABLE `shop_events` MODIFY aggregate_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
--   ALTER TABLE `shop_heads` MODIFY bounded_context VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
--   ALTER TABLE `shop_heads` MODIFY aggregate_type VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
--   ALTER TABLE `shop_heads` MODIFY aggregate_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
--   ALTER TABLE `shop_checkpoints` MODIFY projection_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;

-- Events: the append-only log. global_position orders all events; the unique key allows one event per aggregate version (optimistic concurrency).
CREATE TABLE IF NOT EXISTS `shop_events` (
    global_position BIGINT AUTO_INCREMENT PRIMARY KEY,
    bounded_context VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_type VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_version BIGINT NOT NULL,
    event_id BINARY(16) NOT NULL UNIQUE,
    event_type VARCHAR(255) NOT NULL,
    event_version INT NOT NULL DEFAULT 1,
    payload BLOB NOT NULL,
    trace_id VARCHAR(255),
    correlation_id VARCHAR(255),
    causation_id VARCHAR(255),
    metadata JSON,
    created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    partition_hash BIGINT,
    UNIQUE KEY unique_aggregate_version (bounded_context, aggregate_type, aggregate_id, aggregate_version),
    INDEX `idx_shop_events_aggregate` (bounded_context, aggregate_type, aggregate_id, aggregate_version),
    INDEX `idx_shop_events_event_type` (event_type, global_position),
    INDEX `idx_shop_events_correlation` (correlation_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Aggregate heads: the current version of each aggregate, checked and bumped by every append.
CREATE TABLE IF NOT EXISTS `shop_heads` (
    bounded_context VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_type VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_version BIGINT NOT NULL,
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id),
    INDEX `idx_shop_heads_updated` (updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Projection checkpoints: the last global position each projection handled.
CREATE TABLE IF NOT EXISTS `shop_checkpoints` (
    projection_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PRIMARY KEY,
    last_global_position BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    INDEX `idx_shop_checkpoints_updated` (updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Projection dead letters (pupsourcing only; the Go library ignores this table): what a projection set aside after its handler failed on it max_attempts times, with the error, under the projection's checkpoint name.
CREATE TABLE IF NOT EXISTS `projection_dead_letters` (
    projection_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    global_position BIGINT NOT NULL,
    event_id BINARY(16) NOT NULL,
    error_type VARCHAR(255) NOT NULL,
    error_message TEXT NOT NULL,
    traceback TEXT NOT NULL,
    attempts INT NOT NULL,
    failed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (projection_name, global_position)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Projection partition layouts (pupsourcing only; the Go library ignores this table): the total_partitions each projection's checkpoints were made with, so a processor started with another count stops before it handles anything.
CREATE TABLE IF NOT EXISTS `projection_layouts` (
    projection_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PRIMARY KEY,
    total_partitions INT NOT NULL,
    recorded_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Aggregate snapshots (pupsourcing only; the Go library ignores this table): an aggregate's state at a version, so loading it replays only what came after.
CREATE TABLE IF NOT EXISTS `aggregate_snapshots` (
    bounded_context VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_type VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_version BIGINT NOT NULL,
    schema_version INT NOT NULL,
    state LONGBLOB NOT NULL,
    created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id, aggregate_version)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Projection partition leases (pupsourcing only; the Go library ignores this table): which process runs which partition under `projections run --claim`, and which copy of a relay publishes, until expires_at (epoch seconds, database clock).
CREATE TABLE IF NOT EXISTS `projection_leases` (
    projection_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    partition_key BIGINT NOT NULL,
    owner VARCHAR(255) NOT NULL,
    expires_at DOUBLE NOT NULL,
    heartbeat DOUBLE NOT NULL,
    PRIMARY KEY (projection_name, partition_key)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS `shop_events` (
    global_position BIGINT AUTO_INCREMENT PRIMARY KEY,
    bounded_context VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_type VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_version BIGINT NOT NULL,
    event_id BINARY(16) NOT NULL UNIQUE,
    event_type VARCHAR(255) NOT NULL,
    event_version INT NOT NULL DEFAULT 1,
    payload BLOB NOT NULL,
    trace_id VARCHAR(255),
    correlation_id VARCHAR(255),
    causation_id VARCHAR(255),
    metadata JSON,
    created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    partition_hash BIGINT,
    UNIQUE KEY unique_aggregate_version (bounded_context, aggregate_type, aggregate_id, aggregate_version),
    INDEX `idx_shop_events_aggregate` (bounded_context, aggregate_type, aggregate_id, aggregate_version),
    INDEX `idx_shop_events_event_type` (event_type, global_position),
    INDEX `idx_shop_events_correlation` (correlation_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
CREATE TABLE IF NOT EXISTS `shop_heads` (
    bounded_context VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_type VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_version BIGINT NOT NULL,
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id),
    INDEX `idx_shop_heads_updated` (updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
CREATE TABLE IF NOT EXISTS `shop_checkpoints` (
    projection_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PRIMARY KEY,
    last_global_position BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    INDEX `idx_shop_checkpoints_updated` (updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
CREATE TABLE IF NOT EXISTS `projection_dead_letters` (
    projection_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    global_position BIGINT NOT NULL,
    event_id BINARY(16) NOT NULL,
    error_type VARCHAR(255) NOT NULL,
    error_message TEXT NOT NULL,
    traceback TEXT NOT NULL,
    attempts INT NOT NULL,
    failed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (projection_name, global_position)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
CREATE TABLE IF NOT EXISTS `projection_layouts` (
    projection_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PRIMARY KEY,
    total_partitions INT NOT NULL,
    recorded_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
CREATE TABLE IF NOT EXISTS `aggregate_snapshots` (
    bounded_context VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_type VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_version BIGINT NOT NULL,
    schema_version INT NOT NULL,
    state LONGBLOB NOT NULL,
    created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id, aggregate_version)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
CREATE TABLE IF NOT EXISTS `projection_leases` (
    projection_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    partition_key BIGINT NOT NULL,
    owner VARCHAR(255) NOT NULL,
    expires_at DOUBLE NOT NULL,
    heartbeat DOUBLE NOT NULL,
    PRIMARY KEY (projection_name, partition_key)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
