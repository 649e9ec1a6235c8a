-- Data keys of cached envelope mode: local 32-byte keys, each wrapped by a
-- remote KEK (a KMS), that wrap user master keys (see the PostgreSQL
-- migration 0005_data_keys.sql). Ciphertext under the KMS, no user's data.
CREATE TABLE kek_data_keys (
    id          TEXT PRIMARY KEY NOT NULL,
    wrapped_by  TEXT NOT NULL,
    wrapped     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) STRICT;
