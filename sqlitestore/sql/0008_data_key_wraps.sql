-- Several KEKs per data key (see the PostgreSQL migration
-- 0011_data_key_wraps.sql): the wraps of a data key beyond its first
-- (kek_data_keys.wrapped), one row per data key and KEK. Deleting a data
-- key deletes these rows in the same transaction.
CREATE TABLE kek_data_key_wraps (
    data_key_id TEXT NOT NULL,
    kek_id      TEXT NOT NULL,
    wrapped     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (data_key_id, kek_id)
) STRICT;
