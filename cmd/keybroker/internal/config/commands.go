package config

// Command is one command of keybroker, or a set of them.
type Command uint

// The commands that read settings.
const (
	Serve Command = 1 << iota
	Migrate
	Rewrap
	KEKStatus
	KEKCheck
	KEKRotateDataKey
	VaultRestoreRecovery
	DevToken
	Healthcheck
	GrantCheck
	GrantKeygen
	// ConfigCheck and ConfigShow read what serve reads.
	ConfigCheck
	ConfigShow
	// AuditVerify and AuditExport: the audit trail's (docs/audit.md).
	AuditVerify
	AuditExport
	// AuditStatus and AuditUpkeep: the audit table's partitions and
	// retention.
	AuditStatus
	AuditUpkeep
)

// Sets of commands that share settings.
const (
	// Tools are the operator commands that reach the store and the KEKs.
	Tools = Rewrap | KEKStatus | KEKCheck | KEKRotateDataKey | VaultRestoreRecovery | AuditVerify | AuditExport | AuditStatus | AuditUpkeep
	// needKEK are the commands that cannot run without a KEK.
	needKEK = Serve | Rewrap | KEKCheck | KEKRotateDataKey | AuditVerify
	// configCmds resolve serve's configuration.
	configCmds = ConfigCheck | ConfigShow
)

var commandNames = map[Command]string{
	Serve: "serve", Migrate: "migrate", Rewrap: "rewrap", KEKStatus: "kek status", KEKCheck: "kek check",
	KEKRotateDataKey: "kek rotate-data-key", VaultRestoreRecovery: "vault restore-recovery", DevToken: "dev token",
	Healthcheck: "healthcheck", GrantCheck: "grant check", GrantKeygen: "grant keygen", ConfigCheck: "config check", ConfigShow: "config show",
	AuditVerify: "audit verify", AuditExport: "audit export", AuditStatus: "audit status", AuditUpkeep: "audit upkeep",
}

// String is the command line that runs the command: "keybroker kek check".
func (c Command) String() string { return "keybroker " + commandNames[c] }
