-- The original service's 003_recovery_wrap.sql, unqualified. Re-adding the
-- constraints after DROP ... IF EXISTS keeps this idempotent on a mana-auth
-- database where 003 already ran; the rows that database holds satisfy them.
ALTER TABLE encryption_vaults
    ADD COLUMN IF NOT EXISTS recovery_wrapped_mk    TEXT,
    ADD COLUMN IF NOT EXISTS recovery_iv            TEXT,
    ADD COLUMN IF NOT EXISTS recovery_format_version SMALLINT NOT NULL DEFAULT 1,
    ADD COLUMN IF NOT EXISTS recovery_set_at        TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS zero_knowledge         BOOLEAN NOT NULL DEFAULT false;

ALTER TABLE encryption_vaults ALTER COLUMN wrapped_mk DROP NOT NULL, ALTER COLUMN wrap_iv DROP NOT NULL;

-- At least one wrap of the master key must exist, or the user is locked out.
ALTER TABLE encryption_vaults DROP CONSTRAINT IF EXISTS encryption_vaults_has_wrap;
ALTER TABLE encryption_vaults ADD CONSTRAINT encryption_vaults_has_wrap
    CHECK (wrapped_mk IS NOT NULL OR recovery_wrapped_mk IS NOT NULL);

-- A wrap without its IV (or an IV without its wrap) cannot be opened.
ALTER TABLE encryption_vaults DROP CONSTRAINT IF EXISTS encryption_vaults_wrap_iv_pair;
ALTER TABLE encryption_vaults ADD CONSTRAINT encryption_vaults_wrap_iv_pair
    CHECK ((wrapped_mk IS NULL) = (wrap_iv IS NULL) AND (recovery_wrapped_mk IS NULL) = (recovery_iv IS NULL));

-- Zero-knowledge means the server holds no wrap it can open, and the
-- recovery wrap is then the only way back to the master key.
ALTER TABLE encryption_vaults DROP CONSTRAINT IF EXISTS encryption_vaults_zk_consistency;
ALTER TABLE encryption_vaults ADD CONSTRAINT encryption_vaults_zk_consistency
    CHECK ((zero_knowledge = false) OR (zero_knowledge = true AND wrapped_mk IS NULL AND recovery_wrapped_mk IS NOT NULL));
