-- Format 1 closes behind the re-wrap job (see the PostgreSQL
-- format1_closure migration): one row, open (closed_at NULL) or closed,
-- when and by whom. Open only if this migration finds rows with a
-- format-1 server wrap; whether it is open is this flag, never a count of
-- rows, so format-1 rows written later do not reopen it.
--
-- SQLite has no roles: anyone who can write the file can do anything to
-- it, these triggers included. They keep keybroker itself, and anything
-- that goes through SQL without dropping a trigger first, from reopening
-- format 1.
CREATE TABLE encryption_vault_format1 (
    singleton   INTEGER PRIMARY KEY NOT NULL DEFAULT 1 CHECK (singleton = 1),
    closed_at   TEXT,
    closed_by   TEXT,
    CONSTRAINT encryption_vault_format1_closed_by CHECK ((closed_at IS NULL) = (closed_by IS NULL))
) STRICT;

INSERT INTO encryption_vault_format1 (singleton, closed_at, closed_by)
SELECT 1,
    CASE WHEN legacy THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%f000Z', 'now') END,
    CASE WHEN legacy THEN NULL ELSE 'keybroker migrate: no format-1 rows' END
FROM (SELECT EXISTS (SELECT 1 FROM encryption_vaults WHERE format_version = 1 AND wrapped_mk IS NOT NULL) AS legacy);

-- One way: a closed row never changes, and the row is never deleted or
-- inserted again.
CREATE TRIGGER encryption_vault_format1_no_reopen BEFORE UPDATE ON encryption_vault_format1
    WHEN OLD.closed_at IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'keybroker: format 1 is closed for good (UPDATE refused on encryption_vault_format1)');
END;
CREATE TRIGGER encryption_vault_format1_no_delete BEFORE DELETE ON encryption_vault_format1
BEGIN
    SELECT RAISE(ABORT, 'keybroker: format 1 is closed for good (DELETE refused on encryption_vault_format1)');
END;
CREATE TRIGGER encryption_vault_format1_no_insert BEFORE INSERT ON encryption_vault_format1
BEGIN
    SELECT RAISE(ABORT, 'keybroker: format 1 is closed for good (INSERT refused on encryption_vault_format1)');
END;
