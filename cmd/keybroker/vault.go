package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

// The operator's vault commands: the restore slot of zero-knowledge
// recovery wraps (broker/restore.go).

// vaultUsage introduces the vault commands.
const vaultUsage = `They read serve's store settings ($DATABASE_URL, $KEYBROKER_DATA_DIR,
$KEYBROKER_SCHEMA); no KEK is needed. -h lists the flags.
`

const restoreRecoveryUsage = `Usage: keybroker vault restore-recovery --user ID [--discard] [flags]

Before the server accepts a change to a zero-knowledge vault that it
cannot verify — a recovery wrap replaced without a checkable keyProof (a
vault adopted from the original service, or KEYBROKER_RECOVERY_PROOF=
optional), or zero-knowledge left with a master key it cannot check — it
keeps the recovery wrap the vault had, once. The data export
(GET /api/v1/internal/users/{userId}/vault) shows it as
hasRestorableRecoveryWrap.

This command puts that wrap back, with its key check value and proof
verifier: the vault is in zero-knowledge mode again, the user opens it
with the recovery code that belonged to the kept wrap, and a server wrap,
if one was made since, is dropped — with it any key minted since (a
rotation): make sure the user has not encrypted data under such a key.
--discard forgets the kept wrap instead. Both write an audit row.

Flags:
`

// cmdVaultRestoreRecovery is `keybroker vault restore-recovery`.
func cmdVaultRestoreRecovery(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.VaultRestoreRecovery, args, getenv, stderr, restoreRecoveryUsage)
	if err != nil {
		return err
	}
	userID, discard := cfg.Tool.User, cfg.Tool.Discard
	if userID == "" {
		return errors.New("--user is required")
	}
	log := newLogger(cfg.Log, stderr)
	store, closeStore, err := openToolStore(ctx, cfg, log, stderr)
	if err != nil {
		return err
	}
	defer closeStore()
	host, _ := os.Hostname()
	meta := broker.RequestMeta{UserAgent: fmt.Sprintf("keybroker vault restore-recovery (%s pid %d)", host, os.Getpid())}
	var res *broker.RestoreResult
	if discard {
		res, err = broker.DiscardRestorableRecoveryWrap(ctx, store, userID, meta)
	} else {
		res, err = broker.RestoreRecoveryWrap(ctx, store, userID, meta)
	}
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return fmt.Errorf("user %q has no vault", userID)
	case errors.Is(err, broker.ErrNoRestorableWrap):
		return fmt.Errorf("user %q has no restorable recovery wrap: nothing to restore or discard", userID)
	case err != nil:
		return err
	}
	set := "unknown"
	if res.RecoverySetAt != nil {
		set = res.RecoverySetAt.UTC().Format(time.RFC3339)
	}
	if discard {
		fmt.Fprintf(stdout, "discarded the recovery wrap of %q kept at %s (set at %s)\n", userID, res.TakenAt.UTC().Format(time.RFC3339), set)
		return nil
	}
	fmt.Fprintf(stdout, "restored the recovery wrap of %q kept at %s (set at %s); the vault is in zero-knowledge mode\n",
		userID, res.TakenAt.UTC().Format(time.RFC3339), set)
	if res.ServerWrapDropped {
		fmt.Fprintln(stdout, "the server wrap made since was dropped")
	}
	return nil
}
