-- Format 1 closes behind the re-wrap job.
--
-- A format-1 wrap (the original service's) is bound to nothing: whoever
-- can write a vault row can paste another user's format-1 wrap into a row
-- of their own, and the server would hand them that user's master key.
-- The re-wrap job upgrades every format-1 row to format 2; once none is
-- left, it closes format 1 here, for good, and keybroker never opens a
-- format-1 wrap again — not one pasted from a dump taken before, not one
-- written afterwards.
--
-- One row: open (closed_at NULL) or closed, when and by whom. Open only if
-- this migration finds rows with a format-1 server wrap (a mana-auth
-- database being adopted); an install without any is closed from the
-- start. Whether format 1 is open is this flag, never a count of rows, so
-- writing format-1 rows later does not reopen it.
CREATE TABLE IF NOT EXISTS encryption_vault_format1 (
    singleton   BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    closed_at   TIMESTAMPTZ,
    closed_by   TEXT,
    CONSTRAINT encryption_vault_format1_closed_by CHECK ((closed_at IS NULL) = (closed_by IS NULL))
);

-- The rows the job upgrades first, and the closing check, without a scan
-- of the whole index.
CREATE INDEX IF NOT EXISTS encryption_vault_kek_index_format1_idx ON encryption_vault_kek_index (user_id)
    WHERE format_version = 1 AND wrapped;

-- The index (migration 0004) mirrors every row, adopted ones included, and
-- has no row-level security: the owner reads it here.
INSERT INTO encryption_vault_format1 (singleton, closed_at, closed_by)
SELECT true, CASE WHEN legacy THEN NULL ELSE now() END, CASE WHEN legacy THEN NULL ELSE 'keybroker migrate: no format-1 rows' END
FROM (SELECT EXISTS (SELECT 1 FROM encryption_vault_kek_index WHERE format_version = 1 AND wrapped) AS legacy) AS found
ON CONFLICT (singleton) DO NOTHING;

-- One way. A trigger refuses any change of a closed row, and any insert,
-- delete or truncate: closed stays closed whatever the privileges of the
-- role that tries (its owner aside, who can disable the trigger: the
-- deliberate reopening of docs/rotation.md). The table is granted to no
-- one; a role that may write vault rows cannot even read it.
--
-- Reading and closing go through two SECURITY DEFINER functions, so that
-- the runtime role needs no grant on the table (an install with split
-- roles keeps working after this migration). Anyone who can use the
-- schema may call them: reading reveals one timestamp, and closing only
-- does what the job would do — it closes nothing while a format-1 row
-- with a server wrap is left. Names are schema-qualified and search_path
-- pinned, as in migration 0004.
DO $migration$
BEGIN
    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.encryption_vault_format1_one_way() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $body$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.closed_at IS NULL THEN
        RETURN NEW; -- open to closed
    END IF;
    RAISE EXCEPTION 'keybroker: format 1 is closed for good (%% refused on encryption_vault_format1)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$body$
$fn$, current_schema());

    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.encryption_vault_format1_state()
RETURNS TABLE (format1_closed_at TIMESTAMPTZ, format1_closed_by TEXT)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
    SELECT closed_at, closed_by FROM %1$I.encryption_vault_format1
$body$
$fn$, current_schema());

    -- Two statements: the second sees what the first wrote. The UPDATE's
    -- NOT EXISTS reads the index as of its own statement, so a format-1
    -- row committed before it keeps format 1 open.
    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.encryption_vault_format1_close(runner TEXT)
RETURNS TABLE (format1_closed_at TIMESTAMPTZ, format1_closed_by TEXT)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
    UPDATE %1$I.encryption_vault_format1 SET closed_at = now(), closed_by = $1
    WHERE closed_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM %1$I.encryption_vault_kek_index WHERE format_version = 1 AND wrapped);
    SELECT closed_at, closed_by FROM %1$I.encryption_vault_format1
$body$
$fn$, current_schema());
END
$migration$;

DROP TRIGGER IF EXISTS encryption_vault_format1_one_way ON encryption_vault_format1;
CREATE TRIGGER encryption_vault_format1_one_way BEFORE INSERT OR UPDATE OR DELETE ON encryption_vault_format1
    FOR EACH ROW EXECUTE FUNCTION encryption_vault_format1_one_way();
DROP TRIGGER IF EXISTS encryption_vault_format1_no_truncate ON encryption_vault_format1;
CREATE TRIGGER encryption_vault_format1_no_truncate BEFORE TRUNCATE ON encryption_vault_format1
    FOR EACH STATEMENT EXECUTE FUNCTION encryption_vault_format1_one_way();
