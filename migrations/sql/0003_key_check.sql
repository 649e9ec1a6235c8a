-- keybroker's additions.
--
-- key_check is the base64 HMAC key check value of the master key; it lets
-- zero-knowledge disable refuse a key that is not the user's. NULL on rows
-- the original service wrote.
ALTER TABLE encryption_vaults ADD COLUMN IF NOT EXISTS key_check TEXT;

-- Wrap formats keybroker can open: 1 (legacy, the only one the original
-- service wrote) and 2 (bound). A row with an unknown format is a bug.
ALTER TABLE encryption_vaults DROP CONSTRAINT IF EXISTS encryption_vaults_format_version_known;
ALTER TABLE encryption_vaults ADD CONSTRAINT encryption_vaults_format_version_known
    CHECK (format_version IN (1, 2));
