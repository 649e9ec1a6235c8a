-- Tamper evidence of the audit trail (docs/audit.md).
--
-- Every row keybroker writes carries mac, an HMAC-SHA256 of its fields
-- under the audit key; the key exists only wrapped by the configured KEKs
-- (encryption_vault_audit_keys), so a database writer cannot compute it.
-- A sealer writes checkpoints, each sealing the rows of a window of
-- created_at (their count, created_at and a MAC prefix), chained by MAC;
-- marks record, under the same key, which sealed rows retention or an
-- erasure removed. `keybroker audit verify` names every row edited,
-- inserted or deleted outside keybroker.
--
-- Adding a nullable column without a default changes only the catalog:
-- no rewrite of a large table, and on a partitioned table it reaches
-- every partition. The previous release keeps inserting rows without a
-- mac (its INSERTs name their columns); the sealer seals them late and
-- verify lists them (docs/audit.md, "Rolling upgrades").
ALTER TABLE encryption_vault_audit ADD COLUMN IF NOT EXISTS mac BYTEA;

CREATE TABLE IF NOT EXISTS encryption_vault_audit_keys (
    id          TEXT NOT NULL,
    wrapped_by  TEXT NOT NULL,
    wrapped     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (id, wrapped_by)
);

CREATE TABLE IF NOT EXISTS encryption_vault_audit_checkpoints (
    n             BIGINT PRIMARY KEY,
    window_start  TIMESTAMPTZ NOT NULL,
    window_end    TIMESTAMPTZ NOT NULL,
    row_count     BIGINT NOT NULL,
    entries       BYTEA NOT NULL,
    prev_mac      BYTEA,
    key_id        TEXT NOT NULL,
    mac           BYTEA NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- No user id in either table: an erasure mark lists the erased rows by
-- time and MAC prefix only.
CREATE TABLE IF NOT EXISTS encryption_vault_audit_marks (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('retention', 'erasure')),
    created_at       TIMESTAMPTZ NOT NULL,
    retained_before  TIMESTAMPTZ,
    entries          BYTEA,
    key_id           TEXT NOT NULL,
    mac              BYTEA NOT NULL
);

-- Sealing, verify and export read every user's rows. A transaction asks
-- for that by setting app.audit_all_rows, transaction-local like the
-- user scopes; it grants reading only. The batch scope
-- (app.current_user_ids) already lets the runtime role name any users;
-- this one spares listing them.
DROP POLICY IF EXISTS encryption_vault_audit_all_rows_read ON encryption_vault_audit;
CREATE POLICY encryption_vault_audit_all_rows_read ON encryption_vault_audit FOR SELECT
    USING (current_setting('app.audit_all_rows', true) = 'on');
