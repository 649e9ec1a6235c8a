-- Data keys of cached envelope mode: local 32-byte keys, each wrapped by a
-- remote KEK (a KMS), that wrap user master keys. User rows record the
-- data key's id as their kek_id.
--
-- The rows are ciphertext under the KMS and belong to no user, so the
-- table has no row-level security; the runtime role reads and writes it.
CREATE TABLE IF NOT EXISTS kek_data_keys (
    id          TEXT PRIMARY KEY,
    wrapped_by  TEXT NOT NULL,
    wrapped     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
