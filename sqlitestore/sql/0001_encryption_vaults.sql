-- keybroker's schema on SQLite: the tables, columns, indexes and CHECK
-- constraints of the PostgreSQL migrations, in one file because SQLite
-- cannot add a constraint to an existing table and there is no older
-- SQLite database to adopt.
--
-- Differences, and why:
--   * STRICT tables: SQLite otherwise stores any value in any column, and a
--     wrapped key that came back as a number would be a silent corruption.
--   * Timestamps are TEXT, always 'YYYY-MM-DDTHH:MM:SS.ffffffZ' in UTC
--     (microseconds, like TIMESTAMPTZ): fixed width, so text order is time
--     order, and SQLite's date functions read it.
--   * zero_knowledge is an INTEGER restricted to 0 and 1 (SQLite has no
--     BOOLEAN); false and true in the constraints below are 0 and 1.
--   * No row-level security: SQLite has none. The store filters every
--     statement by the transaction's user id itself.
CREATE TABLE encryption_vaults (
    user_id                 TEXT PRIMARY KEY NOT NULL,
    wrapped_mk              TEXT,
    wrap_iv                 TEXT,
    format_version          INTEGER NOT NULL DEFAULT 1,
    kek_id                  TEXT NOT NULL DEFAULT 'env-v1',
    created_at              TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    rotated_at              TEXT,
    recovery_wrapped_mk     TEXT,
    recovery_iv             TEXT,
    recovery_format_version INTEGER NOT NULL DEFAULT 1,
    recovery_set_at         TEXT,
    zero_knowledge          INTEGER NOT NULL DEFAULT 0 CHECK (zero_knowledge IN (0, 1)),
    key_check               TEXT,

    -- At least one wrap of the master key must exist, or the user is locked out.
    CONSTRAINT encryption_vaults_has_wrap
        CHECK (wrapped_mk IS NOT NULL OR recovery_wrapped_mk IS NOT NULL),
    -- A wrap without its IV (or an IV without its wrap) cannot be opened.
    CONSTRAINT encryption_vaults_wrap_iv_pair
        CHECK ((wrapped_mk IS NULL) = (wrap_iv IS NULL) AND (recovery_wrapped_mk IS NULL) = (recovery_iv IS NULL)),
    -- Zero-knowledge means the server holds no wrap it can open, and the
    -- recovery wrap is then the only way back to the master key.
    CONSTRAINT encryption_vaults_zk_consistency
        CHECK ((zero_knowledge = false) OR (zero_knowledge = true AND wrapped_mk IS NULL AND recovery_wrapped_mk IS NOT NULL)),
    -- Wrap formats keybroker can open: 1 (legacy) and 2 (bound).
    CONSTRAINT encryption_vaults_format_version_known
        CHECK (format_version IN (1, 2))
) STRICT;
-- Redundant with the primary key, kept so that both stores have the same indexes.
CREATE INDEX encryption_vaults_user_id_idx ON encryption_vaults (user_id);

CREATE TABLE encryption_vault_audit (
    id          TEXT PRIMARY KEY NOT NULL,
    user_id     TEXT NOT NULL,
    action      TEXT NOT NULL,
    ip_address  TEXT,
    user_agent  TEXT,
    context     TEXT,
    status      INTEGER NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
) STRICT;
CREATE INDEX encryption_vault_audit_user_id_idx ON encryption_vault_audit (user_id);
CREATE INDEX encryption_vault_audit_created_at_idx ON encryption_vault_audit (created_at);
