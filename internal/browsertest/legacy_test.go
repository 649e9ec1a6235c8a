package browsertest_test

import (
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/apitest"
)

// answer is one response the original client got: status and JSON body.
type answer struct {
	Status int            `json:"status"`
	Body   map[string]any `json:"body"`
}

func (a answer) requireOK(t *testing.T, what string) {
	t.Helper()
	require.Equal(t, http.StatusOK, a.Status, "%s: %v", what, a.Body)
}

func (a answer) requireError(t *testing.T, what string, status int, code string) {
	t.Helper()
	require.Equal(t, status, a.Status, "%s: %v", what, a.Body)
	require.Equal(t, code, a.Body["code"], "%s: %v", what, a.Body)
	require.IsType(t, "", a.Body["error"], "%s: an error body is {error, code}", what)
}

// legacyStory is what testdata/page/legacy.js's story step reports.
type legacyStory struct {
	Status               answer `json:"status"`
	Init                 answer `json:"init"`
	Key                  answer `json:"key"`
	Rotate               answer `json:"rotate"`
	KeyAfterRotate       answer `json:"keyAfterRotate"`
	SetWrap              answer `json:"setWrap"`
	ClearWrap            answer `json:"clearWrap"`
	SetWrapAgain         answer `json:"setWrapAgain"`
	StatusWithWrap       answer `json:"statusWithWrap"`
	Enable               answer `json:"enable"`
	Locked               answer `json:"locked"`
	Unlocked             string `json:"unlocked"`
	RotateInZK           answer `json:"rotateInZK"`
	ClearInZK            answer `json:"clearInZK"`
	ReplaceInZK          answer `json:"replaceInZK"`
	LockedAfterReplace   answer `json:"lockedAfterReplace"`
	SecondCodeStillOpens bool   `json:"secondCodeStillOpens"`
	Code                 string `json:"code"`
	ThirdCode            string `json:"thirdCode"`
	MasterKey            string `json:"masterKey"`
}

// requireStandardModeAsBefore: every flow of the original client in
// standard mode, and entering zero-knowledge mode, answer as the original
// service answered.
func requireStandardModeAsBefore(t *testing.T, s legacyStory) {
	t.Helper()
	s.Status.requireOK(t, "GET /status")
	require.Equal(t, map[string]any{"vaultExists": false, "hasRecoveryWrap": false, "zeroKnowledge": false, "recoverySetAt": nil}, s.Status.Body)
	s.Init.requireOK(t, "POST /init")
	require.Len(t, s.Init.Body["masterKey"], 44)
	require.Contains(t, s.Init.Body, "kekId")
	require.Contains(t, s.Init.Body, "formatVersion")
	s.Key.requireOK(t, "GET /key")
	require.Equal(t, s.Init.Body["masterKey"], s.Key.Body["masterKey"])
	s.Rotate.requireOK(t, "POST /rotate")
	require.NotEqual(t, s.Init.Body["masterKey"], s.Rotate.Body["masterKey"])
	require.Equal(t, s.MasterKey, s.Rotate.Body["masterKey"])
	require.Equal(t, s.MasterKey, s.KeyAfterRotate.Body["masterKey"])
	s.SetWrap.requireOK(t, "POST /recovery-wrap, standard mode, no keyProof")
	require.Equal(t, map[string]any{"ok": true}, s.SetWrap.Body)
	s.ClearWrap.requireOK(t, "DELETE /recovery-wrap")
	s.SetWrapAgain.requireOK(t, "POST /recovery-wrap again")
	require.Equal(t, true, s.StatusWithWrap.Body["hasRecoveryWrap"])
	s.Enable.requireOK(t, "POST /zero-knowledge {enable: true}, no keyProof")
	require.Equal(t, map[string]any{"ok": true, "zeroKnowledge": true}, s.Enable.Body)
	s.Locked.requireOK(t, "GET /key in zero-knowledge mode")
	require.Equal(t, true, s.Locked.Body["requiresRecoveryCode"])
	require.NotContains(t, s.Locked.Body, "masterKey")
	require.Equal(t, s.MasterKey, s.Unlocked, "the original client's own crypto opens the recovery wrap")
	s.RotateInZK.requireError(t, "POST /rotate in zero-knowledge mode", http.StatusConflict, "ZK_ROTATE_FORBIDDEN")
	s.ClearInZK.requireError(t, "DELETE /recovery-wrap in zero-knowledge mode", http.StatusConflict, "ZK_ACTIVE")
}

// TestOriginalClientInBrowser runs the original web client — its
// requests only, no keyProof, no SDK (testdata/page/legacy.js) — in
// Chromium against keybroker, and shows exactly which of its flows an
// unchanged client keeps (README, "Key possession proof and the restore
// slot"):
//
//   - standard mode, everything as before: status, init, fetch, rotate,
//     set and clear the recovery wrap, enable zero-knowledge;
//   - zero-knowledge mode: fetch the recovery blob and open it with its own
//     WebCrypto, refused rotate and clear as before, leave with the key;
//   - lost: replacing the recovery wrap of a zero-knowledge vault (403
//     KEY_PROOF_REQUIRED, the vault unchanged); the way round still works:
//     leave zero-knowledge, set the new wrap, enable again;
//   - with KEYBROKER_RECOVERY_PROOF=optional the replacement is accepted
//     and the replaced wrap is kept for the operator to restore.
//
// And the formats agree both ways: the SDK opens a wrap the original
// client made, and the original client opens one the SDK made.
func TestOriginalClientInBrowser(t *testing.T) {
	t.Parallel()
	page := pageServer(t, builtSDK(t))
	legacy := openTab(t, page.URL+"/index.html", false, nil)
	sdk := openTab(t, page.URL+"/index.html", true, nil)

	t.Run("ProofRequired", func(t *testing.T) {
		kb := startKeybroker(t, page.URL, apitest.Options{})
		const user = "original-client"
		args := func(extra map[string]any) map[string]any {
			a := map[string]any{"api": kb.URL, "token": mint(t, kb.Issuer, user)}
			for k, v := range extra {
				a[k] = v
			}
			return a
		}
		var s legacyStory
		legacy.call(t, "/legacy.js", "story", args(nil), &s)
		requireStandardModeAsBefore(t, s)

		// The one flow an unchanged client loses.
		s.ReplaceInZK.requireError(t, "POST /recovery-wrap in zero-knowledge mode without keyProof", http.StatusForbidden, "KEY_PROOF_REQUIRED")
		require.Equal(t, s.Locked.Body, s.LockedAfterReplace.Body, "the refused replacement changed nothing")
		require.True(t, s.SecondCodeStillOpens)

		// The way round: leave zero-knowledge mode, set the wrap, enable.
		var long struct {
			Disable      answer `json:"disable"`
			SetWrap      answer `json:"setWrap"`
			Enable       answer `json:"enable"`
			NewCodeOpens bool   `json:"newCodeOpens"`
			Code         string `json:"code"`
		}
		legacy.call(t, "/legacy.js", "changeCodeTheLongWay", args(map[string]any{"code": s.Code}), &long)
		long.Disable.requireOK(t, "POST /zero-knowledge {enable: false, masterKey}")
		require.Equal(t, map[string]any{"ok": true, "zeroKnowledge": false}, long.Disable.Body)
		long.SetWrap.requireOK(t, "POST /recovery-wrap in standard mode")
		long.Enable.requireOK(t, "POST /zero-knowledge {enable: true} again")
		require.True(t, long.NewCodeOpens)

		// The SDK, on another device, opens the original client's wrap and
		// sets a new code (with the proof); the original client opens that.
		var bySDK struct {
			MasterKey string `json:"masterKey"`
			NewCode   string `json:"newCode"`
		}
		sdk.call(t, "/story.js", "unlockAndReplace", args(map[string]any{"code": long.Code}), &bySDK)
		require.Equal(t, s.MasterKey, bySDK.MasterKey)
		require.Regexp(t, codePattern, bySDK.NewCode)
		var byOriginal struct {
			MasterKey string `json:"masterKey"`
		}
		legacy.call(t, "/legacy.js", "unlockWith", args(map[string]any{"code": bySDK.NewCode}), &byOriginal)
		require.Equal(t, s.MasterKey, byOriginal.MasterKey)

		// Leaving zero-knowledge mode with the key is the original's request.
		var left struct {
			Disable answer `json:"disable"`
		}
		legacy.call(t, "/legacy.js", "disable", args(map[string]any{"code": bySDK.NewCode}), &left)
		left.Disable.requireOK(t, "POST /zero-knowledge {enable: false, masterKey}")

		_, entries := auditTrail(t, kb.Service, user)
		var refused []string
		for _, e := range entries {
			if e.Status == http.StatusForbidden {
				refused = append(refused, string(e.Action)+":"+e.Context)
			}
		}
		require.Equal(t, []string{"recovery_set:key-proof-required"}, refused)
	})

	t.Run("ProofOptional", func(t *testing.T) {
		kb := startKeybroker(t, page.URL, apitest.Options{Broker: func(c *broker.Config) {
			c.RecoveryProof = broker.RecoveryProofOptional
		}})
		const user = "original-client-optional"
		token := mint(t, kb.Issuer, user)
		var s legacyStory
		legacy.call(t, "/legacy.js", "story", map[string]any{"api": kb.URL, "token": token}, &s)
		requireStandardModeAsBefore(t, s)

		// Accepted, as the original accepted it: the third code opens the
		// vault now, and the replaced wrap waits for the operator.
		s.ReplaceInZK.requireOK(t, "POST /recovery-wrap in zero-knowledge mode without keyProof, proof optional")
		require.False(t, s.SecondCodeStillOpens)
		var opened struct {
			MasterKey string `json:"masterKey"`
		}
		legacy.call(t, "/legacy.js", "unlockWith", map[string]any{"api": kb.URL, "token": token, "code": s.ThirdCode}, &opened)
		require.Equal(t, s.MasterKey, opened.MasterKey)
		meta, err := kb.Service.VaultMeta(t.Context(), user)
		require.NoError(t, err)
		require.True(t, meta.HasRestorableRecoveryWrap)
		_, entries := auditTrail(t, kb.Service, user)
		var sets []string
		for _, e := range entries {
			if e.Action == broker.ActionRecoverySet {
				sets = append(sets, strconv.Itoa(e.Status)+":"+e.Context)
			}
		}
		require.Equal(t, []string{"200:", "200:", "200:unproven;restorable-kept"}, sets,
			"standard mode needs no proof; the unproven replacement is recorded as such")

		requirePreflighted(t, kb.rec.all(), page.URL)
		requireOriginalRequests(t, kb.rec.all())

		// The operator puts the replaced wrap back: the second code opens
		// the vault again.
		_, err = kb.Service.RestoreRecoveryWrap(t.Context(), user, broker.RequestMeta{})
		require.NoError(t, err)
		legacy.call(t, "/legacy.js", "unlockWith", map[string]any{"api": kb.URL, "token": token, "code": s.Code}, &opened)
		require.Equal(t, s.MasterKey, opened.MasterKey)
	})

}

// requireOriginalRequests: the original client's requests, exactly: the
// bodies have the original's fields and no keyProof.
func requireOriginalRequests(t *testing.T, reqs []seen) {
	t.Helper()
	for _, r := range reqs {
		if r.Body == "" {
			continue
		}
		var body map[string]any
		require.NoError(t, json.Unmarshal([]byte(r.Body), &body), r.Body)
		fields := slices.Sorted(maps.Keys(body))
		switch r.Method + " " + r.Path {
		case "POST /recovery-wrap":
			require.Equal(t, []string{"recoveryIv", "recoveryWrappedMk"}, fields)
		case "POST /zero-knowledge":
			require.Contains(t, [][]string{{"enable"}, {"enable", "masterKey"}}, fields)
		default:
			t.Fatalf("a body on %s %s", r.Method, r.Path)
		}
	}
}
