-- The original service's 002_encryption_vaults.sql, unqualified (the
-- migrator sets search_path to the target schema) and without the foreign
-- keys to auth.users: keybroker's own schema has no users table. On a
-- mana-auth database (schema auth) where 002 already ran, the tables exist
-- with their foreign keys and every statement below is a no-op or an
-- idempotent re-statement.
CREATE TABLE IF NOT EXISTS encryption_vaults (
    user_id         TEXT PRIMARY KEY,
    wrapped_mk      TEXT NOT NULL,
    wrap_iv         TEXT NOT NULL,
    format_version  SMALLINT NOT NULL DEFAULT 1,
    kek_id          TEXT NOT NULL DEFAULT 'env-v1',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    rotated_at      TIMESTAMPTZ
);
-- Redundant with the primary key, kept so that both schemas are identical.
CREATE INDEX IF NOT EXISTS encryption_vaults_user_id_idx ON encryption_vaults (user_id);

CREATE TABLE IF NOT EXISTS encryption_vault_audit (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    action          TEXT NOT NULL,
    ip_address      TEXT,
    user_agent      TEXT,
    context         TEXT,
    status          INTEGER NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS encryption_vault_audit_user_id_idx ON encryption_vault_audit (user_id);
CREATE INDEX IF NOT EXISTS encryption_vault_audit_created_at_idx ON encryption_vault_audit (created_at);

-- FORCE makes the policies bind the table owner too: only a superuser or a
-- BYPASSRLS role escapes them, and keybroker's runtime role is neither.
ALTER TABLE encryption_vaults ENABLE ROW LEVEL SECURITY;
ALTER TABLE encryption_vaults FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS encryption_vaults_user_isolation ON encryption_vaults;
CREATE POLICY encryption_vaults_user_isolation ON encryption_vaults
    USING (user_id = current_setting('app.current_user_id', true))
    WITH CHECK (user_id = current_setting('app.current_user_id', true));

ALTER TABLE encryption_vault_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE encryption_vault_audit FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS encryption_vault_audit_user_isolation ON encryption_vault_audit;
CREATE POLICY encryption_vault_audit_user_isolation ON encryption_vault_audit
    USING (user_id = current_setting('app.current_user_id', true))
    WITH CHECK (user_id = current_setting('app.current_user_id', true));
