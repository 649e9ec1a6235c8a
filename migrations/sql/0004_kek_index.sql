-- The re-wrap job's bookkeeping.
--
-- Row-level security is forced on encryption_vaults and keybroker's
-- runtime role has no BYPASSRLS, so no statement can see the rows of more
-- than one user: the job could not find the rows it must move. This table
-- mirrors, per user, the little the job and `keybroker kek status` need —
-- which KEK wrapped the row, in which format, whether the server holds a
-- wrap at all — and nothing secret: no wrap, no IV, no key check value. It
-- has no row-level security; user ids and KEK ids are what it reveals.
--
-- A trigger keeps it in step with encryption_vaults in the same
-- transaction as every change, so it is never behind a committed row.
CREATE TABLE IF NOT EXISTS encryption_vault_kek_index (
    user_id         TEXT PRIMARY KEY,
    kek_id          TEXT NOT NULL,
    format_version  SMALLINT NOT NULL,
    wrapped         BOOLEAN NOT NULL,   -- wrapped_mk IS NOT NULL: the server can open the row
    zero_knowledge  BOOLEAN NOT NULL
);

-- One row: what the job's current (or last) runner reported, for status.
-- Whether a runner is alive is not read from here but from the advisory
-- lock it holds (pg_locks), which dies with its connection.
CREATE TABLE IF NOT EXISTS encryption_vault_rewrap_state (
    singleton       BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    runner          TEXT NOT NULL,
    active_kek_id   TEXT NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    finished_at     TIMESTAMPTZ,
    rows_total      BIGINT NOT NULL DEFAULT 0,
    rows_done       BIGINT NOT NULL DEFAULT 0,
    rows_skipped    BIGINT NOT NULL DEFAULT 0,
    rows_failed     BIGINT NOT NULL DEFAULT 0,
    rows_per_second DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_error      TEXT
);

-- The trigger function runs as its owner (SECURITY DEFINER), so the
-- runtime role needs no write privilege on the index: a role that may
-- only read and write encryption_vaults keeps working after this
-- migration, and cannot forge index rows by hand. Names are schema-
-- qualified and search_path pinned, as a definer function should be; the
-- schema is only known when the migration runs, hence format().
--
-- Statement-level triggers with transition tables: a batch of the job
-- that moves many rows in one statement updates the index in one
-- statement too.
DO $migration$
BEGIN
    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.encryption_vault_kek_index_sync() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
BEGIN
    -- Each branch names only the transition tables its event has.
    IF TG_OP = 'DELETE' THEN
        DELETE FROM %1$I.encryption_vault_kek_index i USING old_rows o WHERE i.user_id = o.user_id;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        -- Only an UPDATE that changes a user_id leaves an old id behind.
        DELETE FROM %1$I.encryption_vault_kek_index i USING old_rows o
        WHERE i.user_id = o.user_id AND NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.user_id = o.user_id);
    END IF;
    INSERT INTO %1$I.encryption_vault_kek_index AS i (user_id, kek_id, format_version, wrapped, zero_knowledge)
        SELECT n.user_id, n.kek_id, n.format_version, n.wrapped_mk IS NOT NULL, n.zero_knowledge FROM new_rows n
        ON CONFLICT (user_id) DO UPDATE SET
            kek_id = EXCLUDED.kek_id, format_version = EXCLUDED.format_version,
            wrapped = EXCLUDED.wrapped, zero_knowledge = EXCLUDED.zero_knowledge
        WHERE (i.kek_id, i.format_version, i.wrapped, i.zero_knowledge)
              IS DISTINCT FROM (EXCLUDED.kek_id, EXCLUDED.format_version, EXCLUDED.wrapped, EXCLUDED.zero_knowledge);
    RETURN NULL;
END
$body$
$fn$, current_schema());
END
$migration$;

DROP TRIGGER IF EXISTS encryption_vault_kek_index_insert ON encryption_vaults;
CREATE TRIGGER encryption_vault_kek_index_insert AFTER INSERT ON encryption_vaults
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION encryption_vault_kek_index_sync();
DROP TRIGGER IF EXISTS encryption_vault_kek_index_update ON encryption_vaults;
CREATE TRIGGER encryption_vault_kek_index_update AFTER UPDATE ON encryption_vaults
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION encryption_vault_kek_index_sync();
DROP TRIGGER IF EXISTS encryption_vault_kek_index_delete ON encryption_vaults;
CREATE TRIGGER encryption_vault_kek_index_delete AFTER DELETE ON encryption_vaults
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION encryption_vault_kek_index_sync();

-- Batch scope. Each transaction of a request is scoped to one user
-- (app.current_user_id). The re-wrap job moves thousands of rows of
-- different users; one statement per row costs several times what one
-- statement per batch does (docs/rotation.md has the numbers). So a
-- transaction may instead scope itself to an explicit list of users,
-- app.current_user_ids — a PostgreSQL array literal set with
-- set_config(..., true), transaction-local like the single scope. It sees
-- and writes exactly the rows of the users it names, no others; unset
-- (or empty, as a custom setting reads once a pooled connection has used
-- it) it matches nothing. The single-user policy above is unchanged;
-- permissive policies are ORed. Written as IN (subquery), the list is
-- parsed once per statement and probed as a hash table (a hashed SubPlan),
-- not parsed and scanned once per row.
DROP POLICY IF EXISTS encryption_vaults_batch_isolation ON encryption_vaults;
CREATE POLICY encryption_vaults_batch_isolation ON encryption_vaults
    USING (user_id IN (SELECT unnest(nullif(current_setting('app.current_user_ids', true), '')::text[])))
    WITH CHECK (user_id IN (SELECT unnest(nullif(current_setting('app.current_user_ids', true), '')::text[])));
DROP POLICY IF EXISTS encryption_vault_audit_batch_isolation ON encryption_vault_audit;
CREATE POLICY encryption_vault_audit_batch_isolation ON encryption_vault_audit
    USING (user_id IN (SELECT unnest(nullif(current_setting('app.current_user_ids', true), '')::text[])))
    WITH CHECK (user_id IN (SELECT unnest(nullif(current_setting('app.current_user_ids', true), '')::text[])));

-- Backfill from the rows that exist (a mana-auth database being adopted,
-- or an install upgraded to this version). The owner running this is
-- bound by the forced policies like everyone else and would see no row;
-- lifting FORCE inside this transaction lets it read them all. The
-- ALTERs hold an ACCESS EXCLUSIVE lock until commit, so no other session
-- ever runs without the forced policy.
ALTER TABLE encryption_vaults NO FORCE ROW LEVEL SECURITY;
INSERT INTO encryption_vault_kek_index (user_id, kek_id, format_version, wrapped, zero_knowledge)
SELECT user_id, kek_id, format_version, wrapped_mk IS NOT NULL, zero_knowledge FROM encryption_vaults
ON CONFLICT (user_id) DO UPDATE SET
    kek_id = EXCLUDED.kek_id, format_version = EXCLUDED.format_version,
    wrapped = EXCLUDED.wrapped, zero_knowledge = EXCLUDED.zero_knowledge;
-- Index rows of users whose vault is gone (only possible if this ran
-- before and rows were deleted without the trigger).
DELETE FROM encryption_vault_kek_index i
WHERE NOT EXISTS (SELECT 1 FROM encryption_vaults v WHERE v.user_id = i.user_id);
ALTER TABLE encryption_vaults FORCE ROW LEVEL SECURITY;
