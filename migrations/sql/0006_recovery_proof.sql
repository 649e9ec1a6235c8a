-- Key possession proof and the restore slot of zero-knowledge recovery
-- wraps (broker.Vault.KeyProof and broker.Vault.Restorable).
--
-- key_proof is the verifier of the proof a client sends to replace the
-- recovery wrap of a zero-knowledge vault: base64 SHA-256 of
-- HMAC-SHA256(MK, "keybroker key possession proof v1"), ':', and the
-- key_check it was recorded with. Neither it nor key_check yields the
-- proof. NULL until the server holds the key (init, rotate, enable,
-- disable with a verified key).
--
-- The restorable_* columns are one recovery wrap the server kept before it
-- accepted a change it could not verify (a replacement without a
-- checkable proof, a zero-knowledge disable with an unverifiable key),
-- with the key_check and key_proof that belonged to it, and when it was
-- kept. Only the operator empties them (restore or discard), or erasure.
--
-- Rolling upgrades: every column is nullable and NULL passes the new
-- constraint, so the previous release — which names its columns in every
-- INSERT and UPDATE — keeps serving on this schema and never touches
-- these columns. A key_proof it leaves behind when it rotates a key no
-- longer names the row's key_check, and keybroker ignores it.
ALTER TABLE encryption_vaults
    ADD COLUMN IF NOT EXISTS key_proof                          TEXT,
    ADD COLUMN IF NOT EXISTS restorable_recovery_wrapped_mk     TEXT,
    ADD COLUMN IF NOT EXISTS restorable_recovery_iv             TEXT,
    ADD COLUMN IF NOT EXISTS restorable_recovery_format_version SMALLINT,
    ADD COLUMN IF NOT EXISTS restorable_recovery_set_at         TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS restorable_key_check               TEXT,
    ADD COLUMN IF NOT EXISTS restorable_key_proof               TEXT,
    ADD COLUMN IF NOT EXISTS restorable_taken_at                TIMESTAMPTZ;

-- A kept wrap is whole: the wrap, its IV, its format and when it was kept,
-- all or none.
ALTER TABLE encryption_vaults DROP CONSTRAINT IF EXISTS encryption_vaults_restorable_complete;
ALTER TABLE encryption_vaults ADD CONSTRAINT encryption_vaults_restorable_complete
    CHECK ((restorable_recovery_wrapped_mk IS NULL) = (restorable_recovery_iv IS NULL)
       AND (restorable_recovery_wrapped_mk IS NULL) = (restorable_recovery_format_version IS NULL)
       AND (restorable_recovery_wrapped_mk IS NULL) = (restorable_taken_at IS NULL));
