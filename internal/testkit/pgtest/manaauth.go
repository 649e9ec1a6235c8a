package pgtest

import (
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

// ManaAuthUsers is the stand-in for mana-auth's users table, which the
// original's vault tables reference.
const ManaAuthUsers = `CREATE TABLE auth.users (id TEXT PRIMARY KEY, email TEXT NOT NULL)`

// ManaAuth002 and ManaAuth003 are the original service's migrations,
// verbatim.
const ManaAuth002 = `
CREATE TABLE IF NOT EXISTS auth.encryption_vaults (
    user_id         TEXT PRIMARY KEY REFERENCES auth.users(id) ON DELETE CASCADE,
    wrapped_mk      TEXT NOT NULL,
    wrap_iv         TEXT NOT NULL,
    format_version  SMALLINT NOT NULL DEFAULT 1,
    kek_id          TEXT NOT NULL DEFAULT 'env-v1',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    rotated_at      TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS encryption_vaults_user_id_idx ON auth.encryption_vaults (user_id);
CREATE TABLE IF NOT EXISTS auth.encryption_vault_audit (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
    action          TEXT NOT NULL,
    ip_address      TEXT,
    user_agent      TEXT,
    context         TEXT,
    status          INTEGER NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS encryption_vault_audit_user_id_idx ON auth.encryption_vault_audit (user_id);
CREATE INDEX IF NOT EXISTS encryption_vault_audit_created_at_idx ON auth.encryption_vault_audit (created_at);
ALTER TABLE auth.encryption_vaults ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth.encryption_vaults FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS encryption_vaults_user_isolation ON auth.encryption_vaults;
CREATE POLICY encryption_vaults_user_isolation ON auth.encryption_vaults
    USING (user_id = current_setting('app.current_user_id', true))
    WITH CHECK (user_id = current_setting('app.current_user_id', true));
ALTER TABLE auth.encryption_vault_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE auth.encryption_vault_audit FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS encryption_vault_audit_user_isolation ON auth.encryption_vault_audit;
CREATE POLICY encryption_vault_audit_user_isolation ON auth.encryption_vault_audit
    USING (user_id = current_setting('app.current_user_id', true))
    WITH CHECK (user_id = current_setting('app.current_user_id', true));
`

const ManaAuth003 = `
ALTER TABLE auth.encryption_vaults
    ADD COLUMN IF NOT EXISTS recovery_wrapped_mk    TEXT,
    ADD COLUMN IF NOT EXISTS recovery_iv            TEXT,
    ADD COLUMN IF NOT EXISTS recovery_format_version SMALLINT NOT NULL DEFAULT 1,
    ADD COLUMN IF NOT EXISTS recovery_set_at        TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS zero_knowledge         BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE auth.encryption_vaults ALTER COLUMN wrapped_mk DROP NOT NULL, ALTER COLUMN wrap_iv DROP NOT NULL;
ALTER TABLE auth.encryption_vaults DROP CONSTRAINT IF EXISTS encryption_vaults_has_wrap;
ALTER TABLE auth.encryption_vaults ADD CONSTRAINT encryption_vaults_has_wrap
    CHECK (wrapped_mk IS NOT NULL OR recovery_wrapped_mk IS NOT NULL);
ALTER TABLE auth.encryption_vaults DROP CONSTRAINT IF EXISTS encryption_vaults_wrap_iv_pair;
ALTER TABLE auth.encryption_vaults ADD CONSTRAINT encryption_vaults_wrap_iv_pair
    CHECK ((wrapped_mk IS NULL) = (wrap_iv IS NULL) AND (recovery_wrapped_mk IS NULL) = (recovery_iv IS NULL));
ALTER TABLE auth.encryption_vaults DROP CONSTRAINT IF EXISTS encryption_vaults_zk_consistency;
ALTER TABLE auth.encryption_vaults ADD CONSTRAINT encryption_vaults_zk_consistency
    CHECK ((zero_knowledge = false) OR (zero_knowledge = true AND wrapped_mk IS NULL AND recovery_wrapped_mk IS NOT NULL));
`

// CreateManaAuthSchema creates, as pool's role, what a mana-auth database
// holds before keybroker adopts it: schema auth, its users table and the
// vault tables of the original's migrations 002 and 003, whose user_id
// columns reference auth.users (ON DELETE CASCADE). Add users with
// INSERT INTO auth.users (id, email).
func CreateManaAuthSchema(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	Exec(t, pool, "CREATE SCHEMA auth")
	Exec(t, pool, ManaAuthUsers)
	Exec(t, pool, ManaAuth002)
	Exec(t, pool, ManaAuth003)
}
