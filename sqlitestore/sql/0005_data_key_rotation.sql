-- Data-key rotation in cached envelope mode (see the PostgreSQL migration
-- 0006_data_key_rotation.sql): the ids of deleted data keys, and triggers
-- that refuse a row with a server wrap under one of them, so that a
-- process whose data keys are stale cannot store a row no key opens. A
-- data key is deleted in a write transaction, which SQLite runs one at a
-- time, so the check that no row names it and every such write are
-- ordered. RAISE(ABORT) is the store's only trigger error
-- (SQLITE_CONSTRAINT_TRIGGER), which it translates to "data key deleted".
CREATE TABLE kek_data_keys_deleted (
    id          TEXT PRIMARY KEY NOT NULL,
    deleted_at  TEXT NOT NULL
) STRICT;

CREATE TRIGGER encryption_vaults_data_key_check_insert BEFORE INSERT ON encryption_vaults
WHEN NEW.wrapped_mk IS NOT NULL AND EXISTS (SELECT 1 FROM kek_data_keys_deleted WHERE id = NEW.kek_id)
BEGIN
    SELECT RAISE(ABORT, 'encryption_vaults_data_key_exists: the row names a deleted data key');
END;

CREATE TRIGGER encryption_vaults_data_key_check_update BEFORE UPDATE ON encryption_vaults
WHEN NEW.wrapped_mk IS NOT NULL AND EXISTS (SELECT 1 FROM kek_data_keys_deleted WHERE id = NEW.kek_id)
BEGIN
    SELECT RAISE(ABORT, 'encryption_vaults_data_key_exists: the row names a deleted data key');
END;
