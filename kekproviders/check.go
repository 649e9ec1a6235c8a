package kekproviders

import (
	"context"

	"github.com/keybroker/keybroker/kek"
)

// CheckResult is kek.CheckResult: the probe lives in the contract
// package, where the domain's runtime runs it at start.
type CheckResult = kek.CheckResult

// CheckBinding is kek.CheckBinding.
func CheckBinding(kekID string) map[string]string { return kek.CheckBinding(kekID) }

// Check is kek.Check.
func Check(ctx context.Context, k kek.KEK, onCall func(kek.Call)) CheckResult {
	return kek.Check(ctx, k, onCall)
}
