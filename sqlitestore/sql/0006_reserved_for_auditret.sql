-- PLACEHOLDER, to be deleted when branch auditret (whose 0006 adds the
-- audit retention) is merged: migration versions may have no gap, and
-- branch auditint's migration is 0007. It changes nothing.
SELECT 1;
