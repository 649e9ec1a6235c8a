-- The key possession proof's verifier and the restore slot of
-- zero-knowledge recovery wraps, as in the PostgreSQL migration
-- 0006_recovery_proof.sql. SQLite cannot add a table constraint to an
-- existing table; a column constraint may name other columns, so the
-- constraint rides on the last column added, under the same name.
ALTER TABLE encryption_vaults ADD COLUMN key_proof TEXT;
ALTER TABLE encryption_vaults ADD COLUMN restorable_recovery_wrapped_mk TEXT;
ALTER TABLE encryption_vaults ADD COLUMN restorable_recovery_iv TEXT;
ALTER TABLE encryption_vaults ADD COLUMN restorable_recovery_format_version INTEGER;
ALTER TABLE encryption_vaults ADD COLUMN restorable_recovery_set_at TEXT;
ALTER TABLE encryption_vaults ADD COLUMN restorable_key_check TEXT;
ALTER TABLE encryption_vaults ADD COLUMN restorable_key_proof TEXT;
ALTER TABLE encryption_vaults ADD COLUMN restorable_taken_at TEXT
    -- A kept wrap is whole: the wrap, its IV, its format and when it was
    -- kept, all or none.
    CONSTRAINT encryption_vaults_restorable_complete
    CHECK ((restorable_recovery_wrapped_mk IS NULL) = (restorable_recovery_iv IS NULL)
       AND (restorable_recovery_wrapped_mk IS NULL) = (restorable_recovery_format_version IS NULL)
       AND (restorable_recovery_wrapped_mk IS NULL) = (restorable_taken_at IS NULL));
