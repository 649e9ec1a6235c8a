-- Replicas announce which KEKs they can open (docs/rotation.md, "One-step
-- rollout"). Every serve process keeps one row here, refreshed on a
-- heartbeat: the ids of the KEKs it holds, the one it is configured to
-- make new wraps with, the one it really writes under, and when the row
-- expires if no heartbeat renews it. A replica makes new wraps under a
-- newly configured KEK, and the re-wrap job moves rows to it, only once
-- every live row here lists that KEK: a replica of the old configuration
-- is never handed a row it cannot open.
--
-- The rows belong to no user and hold no key material (KEK ids, host
-- names, versions). The table is granted to no one: the runtime role goes
-- through the SECURITY DEFINER functions below, so an install with split
-- roles keeps working after this migration without a new grant, as for
-- the format-1 closure (migration 0007). The clock is the database's, so
-- replicas with skewed clocks agree on who is live.
--
-- The previous release knows nothing of this table and keeps working on
-- this schema; it announces nothing, which docs/rotation.md covers
-- (KEYBROKER_ROLLOUT_REPLICAS).
CREATE TABLE IF NOT EXISTS keybroker_replicas (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    active_kek  TEXT NOT NULL,
    writes_kek  TEXT NOT NULL,
    kek_ids     TEXT[] NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    seen_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    CONSTRAINT keybroker_replicas_bounded CHECK (
        length(id) <= 200 AND length(name) <= 200 AND length(version) <= 200
        AND cardinality(kek_ids) <= 1000 AND expires_at > seen_at AND expires_at <= seen_at + interval '1 hour')
);

DO $migration$
BEGIN
    -- Announce (insert or renew) one replica's row, valid for ttl_ms from
    -- now on the database's clock — an hour at most, so that a row
    -- nobody renews holds a rollout back for no longer — and drop the
    -- rows that expired long ago (a day), so crashed replicas do not pile
    -- up.
    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.keybroker_replica_announce(
    replica_id TEXT, replica_name TEXT, replica_version TEXT, replica_active TEXT, replica_writes TEXT,
    replica_kek_ids TEXT[], ttl_ms BIGINT)
RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
    INSERT INTO %1$I.keybroker_replicas AS r (id, name, version, active_kek, writes_kek, kek_ids, started_at, seen_at, expires_at)
    VALUES ($1, $2, $3, $4, $5, $6, now(), now(), now() + make_interval(secs => LEAST($7, 3600000) / 1000.0))
    ON CONFLICT (id) DO UPDATE SET name = excluded.name, version = excluded.version, active_kek = excluded.active_kek,
        writes_kek = excluded.writes_kek, kek_ids = excluded.kek_ids, seen_at = excluded.seen_at, expires_at = excluded.expires_at;
    DELETE FROM %1$I.keybroker_replicas WHERE expires_at < now() - interval '1 day';
$body$
$fn$, current_schema());

    -- The live replicas (not expired), with the database's clock.
    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.keybroker_replica_list()
RETURNS TABLE (replica_id TEXT, replica_name TEXT, replica_version TEXT, replica_active TEXT, replica_writes TEXT,
    replica_kek_ids TEXT[], replica_started_at TIMESTAMPTZ, replica_seen_at TIMESTAMPTZ, replica_expires_at TIMESTAMPTZ,
    db_now TIMESTAMPTZ)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
    SELECT id, name, version, active_kek, writes_kek, kek_ids, started_at, seen_at, expires_at, now()
    FROM %1$I.keybroker_replicas WHERE expires_at > now() ORDER BY started_at, id
$body$
$fn$, current_schema());

    -- A replica that stops cleanly leaves at once instead of expiring.
    EXECUTE format($fn$
CREATE OR REPLACE FUNCTION %1$I.keybroker_replica_leave(replica_id TEXT)
RETURNS VOID
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
    DELETE FROM %1$I.keybroker_replicas WHERE id = $1
$body$
$fn$, current_schema());
END
$migration$;

REVOKE ALL ON keybroker_replicas FROM PUBLIC;
