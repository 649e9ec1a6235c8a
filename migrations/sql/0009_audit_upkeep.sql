-- The audit table's upkeep (pgstore/auditpartitions.go): keybroker
-- partitions encryption_vault_audit by day of created_at, moving an
-- unpartitioned table over online, and drops whole partitions past
-- KEYBROKER_AUDIT_RETENTION. The move and the partitions are not done here:
-- a migration is one transaction, and checking and indexing a table of 100
-- million rows inside one would lock out every fetch for minutes. The
-- server's upkeep does it with CREATE INDEX CONCURRENTLY and a CHECK
-- constraint validated without blocking writes, then swaps the tables in a
-- transaction of a few milliseconds.
--
-- This table is the upkeep's record: the bound chosen for a move in
-- progress (so that a move resumed after a crash keeps it), when the move
-- happened, and the last run, for `keybroker audit status`.
CREATE TABLE IF NOT EXISTS encryption_vault_audit_upkeep (
    id                  BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    -- The moved table holds the rows created before cutover.
    cutover             TIMESTAMPTZ,
    moved_at            TIMESTAMPTZ,
    last_run_at         TIMESTAMPTZ,
    last_runner         TEXT,
    last_error          TEXT,
    dropped_partitions  BIGINT NOT NULL DEFAULT 0,
    dropped_rows        BIGINT NOT NULL DEFAULT 0
);
INSERT INTO encryption_vault_audit_upkeep (id) VALUES (true) ON CONFLICT (id) DO NOTHING;
