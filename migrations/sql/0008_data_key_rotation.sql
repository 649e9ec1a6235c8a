-- Data-key rotation in cached envelope mode.
--
-- The re-wrap job deletes a data key once no row with a server wrap names
-- it. A replica that has not reloaded its data keys since (they reload
-- every few minutes, and a reload can fail) may still wrap a new row
-- under the deleted key; that row would open nowhere. The database
-- refuses such a row instead: the id of every deleted data key is kept
-- here, and a trigger on encryption_vaults rejects an INSERT or UPDATE
-- whose rows hold a server wrap under one of them. The writer reloads
-- its data keys and writes again under the newest.
--
-- Old code keeps working on this schema: it never deletes data keys, and
-- its writes fail only for rows under a key a newer replica deleted,
-- which is what protects them too.
CREATE TABLE IF NOT EXISTS kek_data_keys_deleted (
    id          TEXT PRIMARY KEY,
    deleted_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- SECURITY DEFINER, like the KEK index's trigger, so a role that may only
-- write encryption_vaults needs no grant on kek_data_keys_deleted for its
-- writes to be checked. The refusal is a foreign_key_violation naming the
-- constraint encryption_vaults_data_key_exists, which the store
-- translates (by SQLSTATE and constraint name, not by text).
--
-- The deleting transaction holds a SHARE lock on encryption_vaults while
-- it checks that no row names the key and records it here; a writer's
-- statement waits for that lock, and this function's query, volatile,
-- takes a snapshot after the wait, so it sees the record.
DO $migration$
BEGIN
    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.encryption_vaults_data_key_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
DECLARE
    deleted_id TEXT;
BEGIN
    SELECT n.kek_id INTO deleted_id FROM new_rows n
    JOIN %1$I.kek_data_keys_deleted d ON d.id = n.kek_id
    WHERE n.wrapped_mk IS NOT NULL
    LIMIT 1;
    IF deleted_id IS NOT NULL THEN
        RAISE EXCEPTION 'a row with a server wrap names the deleted data key %%', deleted_id
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'encryption_vaults_data_key_exists',
                  TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
    END IF;
    RETURN NULL;
END
$body$
$fn$, current_schema());
END
$migration$;

DROP TRIGGER IF EXISTS encryption_vaults_data_key_check_insert ON encryption_vaults;
CREATE TRIGGER encryption_vaults_data_key_check_insert AFTER INSERT ON encryption_vaults
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION encryption_vaults_data_key_check();
DROP TRIGGER IF EXISTS encryption_vaults_data_key_check_update ON encryption_vaults;
CREATE TRIGGER encryption_vaults_data_key_check_update AFTER UPDATE ON encryption_vaults
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION encryption_vaults_data_key_check();
