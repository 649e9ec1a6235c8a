package browsertest_test

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/cdproto/network"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/apitest"
	"github.com/keybroker/keybroker/vaultapi"
)

// codePattern is the original service's recovery code: 32 bytes as 16
// dashed groups of upper-case hex.
var codePattern = regexp.MustCompile(`^[0-9A-F]{4}(-[0-9A-F]{4}){15}$`)

type statusBody struct {
	VaultExists     bool    `json:"vaultExists"`
	HasRecoveryWrap bool    `json:"hasRecoveryWrap"`
	ZeroKnowledge   bool    `json:"zeroKnowledge"`
	RecoverySetAt   *string `json:"recoverySetAt"`
}

type keyFacts struct {
	Type        string         `json:"type"`
	Extractable bool           `json:"extractable"`
	Algorithm   map[string]any `json:"algorithm"`
	Usages      []string       `json:"usages"`
	ExportError *string        `json:"exportError"`
}

// requireNonExtractableMasterKey: what the app got is a WebCrypto key the
// page can use and never read.
func requireNonExtractableMasterKey(t *testing.T, k keyFacts) {
	t.Helper()
	require.Equal(t, "[object CryptoKey]", k.Type)
	require.False(t, k.Extractable, "the master key must not be extractable")
	require.Equal(t, map[string]any{"name": "AES-GCM", "length": float64(256)}, k.Algorithm)
	require.Equal(t, []string{"decrypt", "encrypt"}, k.Usages)
	require.NotNil(t, k.ExportError, "exportKey read the master key's bytes")
	require.Equal(t, "InvalidAccessError", *k.ExportError)
}

type sealed struct {
	IV string `json:"iv"`
	CT string `json:"ct"`
}

// openSealed opens, in Go, a record the page sealed with a CryptoKey: the
// key was mk.
func openSealed(t *testing.T, mk []byte, s sealed) string {
	t.Helper()
	iv, err := base64.StdEncoding.DecodeString(s.IV)
	require.NoError(t, err)
	ct, err := base64.StdEncoding.DecodeString(s.CT)
	require.NoError(t, err)
	block, err := aes.NewCipher(mk)
	require.NoError(t, err)
	gcm, err := cipher.NewGCM(block)
	require.NoError(t, err)
	plain, err := gcm.Open(nil, iv, ct, nil)
	require.NoError(t, err, "the CryptoKey the page used is not this master key")
	return string(plain)
}

// auditTrail is the user's audit rows as "action:status".
func auditTrail(t *testing.T, svc *broker.Service, user string) ([]string, []broker.AuditEntry) {
	t.Helper()
	page, err := svc.AuditPage(t.Context(), user, "", broker.MaxAuditPageSize)
	require.NoError(t, err)
	trail := make([]string, len(page.Entries))
	for i, e := range page.Entries {
		trail[i] = string(e.Action) + ":" + strconv.Itoa(e.Status)
	}
	return trail, page.Entries
}

func mint(t *testing.T, issuer *jwtissuer.Issuer, user string) string {
	t.Helper()
	tok, err := issuer.Mint(jwtissuer.Claims{Subject: user})
	require.NoError(t, err)
	return tok
}

// TestSDKStoryInBrowser runs the whole story of issue 19 in Chromium with
// the SDK, the page on one origin and keybroker on another, with
// credentials: init, fetch, recovery code, zero-knowledge, unlock as a
// second device (a fresh browser profile), a new code with the key's
// proof, disable, rotate. Each device's requests carry a cookie of
// keybroker's origin, to show credentials travel; the checks are on what
// the page saw, what keybroker received and what it audited.
func TestSDKStoryInBrowser(t *testing.T) {
	t.Parallel()
	page := pageServer(t, builtSDK(t))
	kb := startKeybroker(t, page.URL, apitest.Options{})
	const user = "alice"
	cookieFor := func(device string) *network.SetCookieParams {
		return &network.SetCookieParams{Name: "kb_device", Value: device, URL: kb.URL}
	}
	const plaintext, plaintext2 = "the user's diary, page 1", "the user's diary, page 2"

	// Device A: first sign-in, a recovery code, zero-knowledge mode.
	deviceA := openTab(t, page.URL+"/index.html", false, cookieFor("a"))
	var a struct {
		StatusBefore  statusBody `json:"statusBefore"`
		KeyBeforeInit *pageError `json:"keyBeforeInit"`
		Init          struct {
			RequiresRecoveryCode bool   `json:"requiresRecoveryCode"`
			KEKID                string `json:"kekId"`
			FormatVersion        int    `json:"formatVersion"`
		} `json:"init"`
		Key               keyFacts   `json:"key"`
		Sealed            sealed     `json:"sealed"`
		Reopened          string     `json:"reopened"`
		StoredKey         keyFacts   `json:"storedKey"`
		StoredOpens       string     `json:"storedOpens"`
		BytesType         string     `json:"bytesType"`
		Bytes             string     `json:"bytes"`
		EnableWithoutCode *pageError `json:"enableWithoutCode"`
		RecoveryCode      string     `json:"recoveryCode"`
		StatusZK          statusBody `json:"statusZK"`
		Locked            struct {
			RequiresRecoveryCode bool `json:"requiresRecoveryCode"`
			WrapLength           int  `json:"wrapLength"`
			IVLength             int  `json:"ivLength"`
			HasMasterKey         bool `json:"hasMasterKey"`
		} `json:"locked"`
		RotateInZK     *pageError `json:"rotateInZK"`
		ClearInZK      *pageError `json:"clearInZK"`
		SetWithoutCode *pageError `json:"setWithoutCode"`
	}
	deviceA.call(t, "/story.js", "deviceA", map[string]any{"api": kb.URL, "token": mint(t, kb.Issuer, user), "plaintext": plaintext}, &a)

	require.Equal(t, statusBody{}, a.StatusBefore, "no vault yet")
	requirePageError(t, a.KeyBeforeInit, "NotFoundError", vaultapi.CodeVaultNotInitialised, http.StatusNotFound)
	require.False(t, a.Init.RequiresRecoveryCode)
	require.Equal(t, "env-v1", a.Init.KEKID)
	require.Equal(t, broker.FormatBound, a.Init.FormatVersion)
	requireNonExtractableMasterKey(t, a.Key)
	require.Equal(t, plaintext, a.Reopened, "GET /key hands out the same key")
	requireNonExtractableMasterKey(t, a.StoredKey)
	require.Equal(t, plaintext, a.StoredOpens, "the key kept in IndexedDB still works, still non-extractable")
	// The app asked for bytes once: they are the key the CryptoKeys hold.
	require.Equal(t, "[object Uint8Array]", a.BytesType)
	mk, err := base64.StdEncoding.DecodeString(a.Bytes)
	require.NoError(t, err)
	require.Len(t, mk, 32)
	require.Equal(t, plaintext, openSealed(t, mk, a.Sealed))
	requirePageError(t, a.EnableWithoutCode, "BadRequestError", vaultapi.CodeRecoveryWrapMissing, http.StatusBadRequest)
	require.Regexp(t, codePattern, a.RecoveryCode)
	require.Equal(t, true, a.StatusZK.ZeroKnowledge)
	require.Equal(t, true, a.StatusZK.HasRecoveryWrap)
	require.NotNil(t, a.StatusZK.RecoverySetAt)
	require.True(t, a.Locked.RequiresRecoveryCode)
	require.False(t, a.Locked.HasMasterKey, "in zero-knowledge mode the server hands out no key")
	require.Equal(t, 48, a.Locked.WrapLength)
	require.Equal(t, 12, a.Locked.IVLength)
	requirePageError(t, a.RotateInZK, "ConflictError", vaultapi.CodeZKRotateForbidden, http.StatusConflict)
	requirePageError(t, a.ClearInZK, "ConflictError", vaultapi.CodeZKActive, http.StatusConflict)
	requirePageError(t, a.SetWithoutCode, "RecoveryCodeRequiredError", "", 0)

	// Device B: a fresh profile that has only the recovery code.
	_, wrongCode := client.NewRecoveryCode()
	deviceB := openTab(t, page.URL+"/index.html", true, cookieFor("b"))
	var b struct {
		Status             statusBody `json:"status"`
		WrongCode          *pageError `json:"wrongCode"`
		Malformed          *pageError `json:"malformed"`
		Key                keyFacts   `json:"key"`
		Opened             string     `json:"opened"`
		NewCode            string     `json:"newCode"`
		OldCodeAfter       *pageError `json:"oldCodeAfter"`
		DisableWrongCode   *pageError `json:"disableWrongCode"`
		BackKey            keyFacts   `json:"backKey"`
		BackOpens          string     `json:"backOpens"`
		StatusAfterDisable statusBody `json:"statusAfterDisable"`
		Rotated            struct {
			RequiresRecoveryCode bool   `json:"requiresRecoveryCode"`
			KEKID                string `json:"kekId"`
		} `json:"rotated"`
		RotatedKey          keyFacts   `json:"rotatedKey"`
		OldRecordWithNewKey *pageError `json:"oldRecordWithNewKey"`
		Sealed2             sealed     `json:"sealed2"`
		StatusAfterRotate   statusBody `json:"statusAfterRotate"`
	}
	deviceB.call(t, "/story.js", "deviceB", map[string]any{
		"api": kb.URL, "token": mint(t, kb.Issuer, user), "code": a.RecoveryCode, "wrongCode": wrongCode, "sealed": a.Sealed, "plaintext2": plaintext2,
	}, &b)

	require.True(t, b.Status.ZeroKnowledge)
	requirePageError(t, b.WrongCode, "WrongRecoveryCodeError", "", 0)
	requirePageError(t, b.Malformed, "RecoveryCodeFormatError", "", 0)
	require.NotContains(t, b.Malformed.Message, "1234-5678", "the error repeats the code")
	requireNonExtractableMasterKey(t, b.Key)
	require.Equal(t, plaintext, b.Opened, "the new device reads what device A wrote")
	require.Regexp(t, codePattern, b.NewCode)
	require.NotEqual(t, a.RecoveryCode, b.NewCode)
	requirePageError(t, b.OldCodeAfter, "WrongRecoveryCodeError", "", 0)
	requirePageError(t, b.DisableWrongCode, "WrongRecoveryCodeError", "", 0)
	requireNonExtractableMasterKey(t, b.BackKey)
	require.Equal(t, plaintext, b.BackOpens)
	require.False(t, b.StatusAfterDisable.ZeroKnowledge)
	require.True(t, b.StatusAfterDisable.HasRecoveryWrap)
	require.False(t, b.Rotated.RequiresRecoveryCode)
	require.Equal(t, "env-v1", b.Rotated.KEKID)
	requireNonExtractableMasterKey(t, b.RotatedKey)
	requirePageError(t, b.OldRecordWithNewKey, "", "", 0)
	require.Equal(t, "OperationError", b.OldRecordWithNewKey.Name, "the old key is gone: its records do not open under the new one")
	require.Equal(t, statusBody{VaultExists: true}, b.StatusAfterRotate, "rotation clears the recovery wrap")

	// Device A again: the rotated key, fetched there, opens what B wrote.
	var again struct {
		Opened string `json:"opened"`
	}
	deviceA.call(t, "/story.js", "deviceAAgain", map[string]any{"api": kb.URL, "token": mint(t, kb.Issuer, user), "sealed": b.Sealed2}, &again)
	require.Equal(t, plaintext2, again.Opened)

	// What keybroker received: real preflights, credentials, the token.
	reqs := kb.rec.all()
	requirePreflighted(t, reqs, page.URL)
	cookies := map[string]int{}
	var sawJSONPreflight bool
	for _, r := range reqs {
		if r.preflight() {
			sawJSONPreflight = sawJSONPreflight || strings.Contains(strings.ToLower(r.RequestHeaders), "content-type")
			continue
		}
		require.Regexp(t, `^kb_device=[ab]$`, r.Cookie, "credentials: \"include\" sends keybroker's cookies: %s %s", r.Method, r.Path)
		cookies[r.Cookie]++
	}
	require.True(t, sawJSONPreflight, "a JSON body needs Content-Type allowed by a preflight")
	require.Positive(t, cookies["kb_device=a"])
	require.Positive(t, cookies["kb_device=b"], "device B is its own profile with its own cookie")

	// The recovery codes never left the page; the master key left it once,
	// to leave zero-knowledge mode ({enable: false, masterKey}).
	withKey := 0
	for _, r := range reqs {
		for _, code := range []string{a.RecoveryCode, b.NewCode} {
			digits := strings.ReplaceAll(code, "-", "")
			for _, form := range []string{code, digits, strings.ToLower(digits)} {
				require.NotContains(t, r.Body, form, "a recovery code was sent: %s %s", r.Method, r.Path)
			}
		}
		if strings.Contains(r.Body, a.Bytes) {
			withKey++
			require.Equal(t, "POST /zero-knowledge", r.Method+" "+r.Path)
			require.Contains(t, r.Body, `"enable":false`)
		}
	}
	require.Equal(t, 1, withKey)

	// What keybroker audited, request by request, with Chromium's
	// User-Agent; the recovery-code replacement in zero-knowledge mode was
	// proven with the key (context "key-proof").
	trail, entries := auditTrail(t, kb.Service, user)
	require.Equal(t, []string{
		// Device A. The SDK fetches the key itself for the steps that need
		// its bytes (the proof, the wrap), and each fetch is audited.
		"failed_fetch:404", "init:201", "fetch:200", "fetch:200",
		"fetch:200", "zk_enable:400", // enableZeroKnowledge before a recovery code
		"fetch:200", "recovery_set:200", // setRecoveryCode
		"fetch:200", "zk_enable:200", // enableZeroKnowledge, with the proof
		"fetch:200", "rotate:409", "recovery_clear:409",
		"fetch:200", // setRecoveryCode without the current code: refused in the page
		// Device B: a wrong code (a malformed one costs no request), the
		// unlock, a new code, a wrong code to leave, leaving, rotating.
		"fetch:200", "fetch:200",
		"fetch:200", "recovery_set:200",
		"fetch:200", "fetch:200",
		"fetch:200", "zk_disable:200", "rotate:200",
		// Device A again.
		"fetch:200",
	}, trail)
	for _, e := range entries {
		require.Contains(t, e.UserAgent, "Chrome/", "the audit row records the browser")
	}
	proven := 0
	for _, e := range entries {
		if e.Action == broker.ActionRecoverySet {
			require.Equal(t, "key-proof", e.Context, "every recovery wrap the SDK sets carries the key's proof")
			proven++
		}
	}
	require.Equal(t, 2, proven)
}
