-- The audit retention's record (sqlitestore/auditretention.go): the last
-- run and the rows it removed, for `keybroker audit status`. The rows past
-- KEYBROKER_AUDIT_RETENTION are deleted in small batches through
-- encryption_vault_audit_created_at_idx.
CREATE TABLE encryption_vault_audit_upkeep (
    id            INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    last_run_at   TEXT,
    last_runner   TEXT,
    last_error    TEXT,
    dropped_rows  INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO encryption_vault_audit_upkeep (id) VALUES (1);
