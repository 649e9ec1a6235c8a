-- Several KEKs per data key (cached envelope mode).
--
-- An operator may list more than one remote KEK for the keyring (two KMS
-- regions, AWS and Google Cloud, a KMS and Vault Transit): every data key
-- is then wrapped under each, and any one of them opens it. The wrap
-- kek_data_keys.wrapped (by wrapped_by) stays the data key's first wrap,
-- the one every release reads; the others are here, one row per data key
-- and KEK, each bound to its KEK id like the first.
--
-- The previous release keeps serving on this schema: it reads and writes
-- kek_data_keys only. A data key it deletes takes its other wraps with it
-- (ON DELETE CASCADE); a data key it mints has only its first wrap until a
-- replica of this release adds the others at its next data-key reload.
--
-- Ciphertext under the KMSes, no user's data: no row-level security, like
-- kek_data_keys. With split roles the runtime role needs SELECT, INSERT
-- and DELETE on it: every role granted one of these on kek_data_keys gets
-- the same here, so a runtime role set up for the previous release keeps
-- listing the data keys after this migration.
CREATE TABLE IF NOT EXISTS kek_data_key_wraps (
    data_key_id TEXT NOT NULL REFERENCES kek_data_keys (id) ON DELETE CASCADE,
    kek_id      TEXT NOT NULL,
    wrapped     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (data_key_id, kek_id)
);

DO $migration$
DECLARE
    g record;
BEGIN
    FOR g IN
        SELECT DISTINCT a.grantee, a.privilege_type
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = 'kek_data_keys'::regclass
          AND a.privilege_type IN ('SELECT', 'INSERT', 'DELETE')
          AND a.grantee <> c.relowner
    LOOP
        IF g.grantee = 0 THEN
            EXECUTE format('GRANT %s ON kek_data_key_wraps TO PUBLIC', g.privilege_type);
        ELSE
            EXECUTE format('GRANT %s ON kek_data_key_wraps TO %s', g.privilege_type, g.grantee::regrole);
        END IF;
    END LOOP;
END
$migration$;
