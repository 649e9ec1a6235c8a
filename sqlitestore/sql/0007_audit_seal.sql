-- Tamper evidence of the audit trail (docs/audit.md; the PostgreSQL
-- migration 0010_audit_seal.sql has the why): the rows' MACs, the wraps
-- of the audit key, the checkpoints and the retention and erasure marks.
ALTER TABLE encryption_vault_audit ADD COLUMN mac BLOB;

CREATE TABLE encryption_vault_audit_keys (
    id          TEXT NOT NULL,
    wrapped_by  TEXT NOT NULL,
    wrapped     TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    PRIMARY KEY (id, wrapped_by)
) STRICT;

CREATE TABLE encryption_vault_audit_checkpoints (
    n             INTEGER PRIMARY KEY NOT NULL,
    window_start  TEXT NOT NULL,
    window_end    TEXT NOT NULL,
    row_count     INTEGER NOT NULL,
    entries       BLOB NOT NULL,
    prev_mac      BLOB,
    key_id        TEXT NOT NULL,
    mac           BLOB NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
) STRICT;

CREATE TABLE encryption_vault_audit_marks (
    id               TEXT PRIMARY KEY NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('retention', 'erasure')),
    created_at       TEXT NOT NULL,
    retained_before  TEXT,
    entries          BLOB,
    key_id           TEXT NOT NULL,
    mac              BLOB NOT NULL
) STRICT;
