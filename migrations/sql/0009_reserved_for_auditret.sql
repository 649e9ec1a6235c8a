-- PLACEHOLDER, to be deleted when branch auditret (whose 0009 partitions
-- the audit table) is merged: migration versions may have no gap, and
-- branch auditint's migration is 0010. It changes nothing.
SELECT 1;
