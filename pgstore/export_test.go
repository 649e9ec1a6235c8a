package pgstore

// AuditUpkeepLockKey is the upkeep's advisory lock key, for tests that
// hold it as another replica would.
var AuditUpkeepLockKey = auditUpkeepLockKey
