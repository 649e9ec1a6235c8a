//go:build cgo

package softhsmtest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	cryptoki "github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"
)

// The PINs of every token made here.
const (
	SOPIN   = "so-pin-1234"
	UserPIN = "user-pin-5678"
)

// shared is the test's own handle on the module: initialized once and
// never finalized, since the provider under test shares the module's one
// copy in the process.
var shared struct {
	sync.Mutex // also makes tokens one at a time
	ctx        *cryptoki.Ctx
	tokens     int
}

func module(t testing.TB) *cryptoki.Ctx {
	t.Helper()
	path := Require(t)
	shared.Lock()
	defer shared.Unlock()
	if shared.ctx == nil {
		ctx := cryptoki.New(path)
		require.NotNil(t, ctx, "load %s", path)
		if err := ctx.Initialize(); err != nil && !errors.Is(err, cryptoki.Error(cryptoki.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
			require.NoError(t, err, "C_Initialize")
		}
		shared.ctx = ctx
	}
	return shared.ctx
}

// Token is a SoftHSM2 token made for one test, with its user PIN set to
// UserPIN and written to PINFile (mode 0600).
type Token struct {
	Label      string
	Serial     string
	Slot       uint
	ModulePath string
	PINFile    string
	// Dir is the token's directory in the token store: removing it is
	// SoftHSM's way of pulling the token out.
	Dir string

	ctx *cryptoki.Ctx
}

// NewToken initializes a fresh token in the run's token store.
func NewToken(t testing.TB) *Token {
	t.Helper()
	ctx := module(t)
	shared.Lock()
	defer shared.Unlock()
	shared.tokens++
	label := fmt.Sprintf("keybroker-test-%d", shared.tokens)

	before := tokenDirs(t)
	slots, err := ctx.GetSlotList(true)
	require.NoError(t, err)
	free := -1
	for _, slot := range slots {
		info, err := ctx.GetTokenInfo(slot)
		if err == nil && info.Flags&cryptoki.CKF_TOKEN_INITIALIZED == 0 {
			free = int(slot)
			break
		}
	}
	require.NotEqual(t, -1, free, "SoftHSM has no free slot")
	slot := uint(free)
	require.NoError(t, ctx.InitToken(slot, SOPIN, label), "C_InitToken")
	s, err := ctx.OpenSession(slot, cryptoki.CKF_SERIAL_SESSION|cryptoki.CKF_RW_SESSION)
	require.NoError(t, err)
	require.NoError(t, ctx.Login(s, cryptoki.CKU_SO, SOPIN))
	require.NoError(t, ctx.InitPIN(s, UserPIN))
	require.NoError(t, ctx.Logout(s))
	require.NoError(t, ctx.CloseSession(s))
	info, err := ctx.GetTokenInfo(slot)
	require.NoError(t, err)
	require.Equal(t, label, info.Label)

	var dir string
	for _, d := range tokenDirs(t) {
		if !slices.Contains(before, d) {
			dir = d
		}
	}
	require.NotEmpty(t, dir, "the new token's directory")
	pinFile := filepath.Join(t.TempDir(), "hsm-pin")
	require.NoError(t, os.WriteFile(pinFile, []byte(UserPIN+"\n"), 0o600))
	return &Token{Label: label, Serial: info.SerialNumber, Slot: slot, ModulePath: ModulePath(), PINFile: pinFile, Dir: dir, ctx: ctx}
}

func tokenDirs(t testing.TB) []string {
	entries, err := os.ReadDir(tokenDir())
	require.NoError(t, err)
	var dirs []string
	for _, e := range entries {
		dirs = append(dirs, filepath.Join(tokenDir(), e.Name()))
	}
	return dirs
}

// URI returns the KEK URI of the key labelled object on this token, with
// the PIN file and the KEK id.
func (tok *Token) URI(object, id string) string {
	return "pkcs11:token=" + tok.Label + ";object=" + object +
		"?module-path=" + tok.ModulePath + "&pin-source=file:" + tok.PINFile + "&id=" + id
}

// Admin runs fn in a read-write session of the token's user, as an HSM
// administrator working beside keybroker would.
func (tok *Token) Admin(t testing.TB, fn func(ctx *cryptoki.Ctx, s cryptoki.SessionHandle)) {
	t.Helper()
	s, err := tok.ctx.OpenSession(tok.Slot, cryptoki.CKF_SERIAL_SESSION|cryptoki.CKF_RW_SESSION)
	require.NoError(t, err)
	defer tok.ctx.CloseSession(s)
	info, err := tok.ctx.GetSessionInfo(s)
	require.NoError(t, err)
	if info.State != cryptoki.CKS_RW_USER_FUNCTIONS {
		require.NoError(t, tok.ctx.Login(s, cryptoki.CKU_USER, UserPIN))
	}
	fn(tok.ctx, s)
}

// aesKeyTemplate is what every test key is: an AES token key labelled
// label, sensitive, not extractable, that may encrypt and decrypt.
func aesKeyTemplate(label string) []*cryptoki.Attribute {
	return []*cryptoki.Attribute{
		cryptoki.NewAttribute(cryptoki.CKA_CLASS, cryptoki.CKO_SECRET_KEY),
		cryptoki.NewAttribute(cryptoki.CKA_KEY_TYPE, cryptoki.CKK_AES),
		cryptoki.NewAttribute(cryptoki.CKA_TOKEN, true),
		cryptoki.NewAttribute(cryptoki.CKA_PRIVATE, true),
		cryptoki.NewAttribute(cryptoki.CKA_SENSITIVE, true),
		cryptoki.NewAttribute(cryptoki.CKA_EXTRACTABLE, false),
		cryptoki.NewAttribute(cryptoki.CKA_ENCRYPT, true),
		cryptoki.NewAttribute(cryptoki.CKA_DECRYPT, true),
		cryptoki.NewAttribute(cryptoki.CKA_LABEL, label),
	}
}

// GenerateKey generates a key labelled label inside the token: by default
// an AES-256 token key that is sensitive, not extractable and may encrypt
// and decrypt — what docs/providers.md tells operators to make. Each
// override replaces the default attribute of its type or is added; with
// CKA_KEY_TYPE=CKK_GENERIC_SECRET the key is a generic secret.
func (tok *Token) GenerateKey(t testing.TB, label string, overrides ...*cryptoki.Attribute) {
	t.Helper()
	template := append(aesKeyTemplate(label),
		cryptoki.NewAttribute(cryptoki.CKA_WRAP, false),
		cryptoki.NewAttribute(cryptoki.CKA_UNWRAP, false),
		cryptoki.NewAttribute(cryptoki.CKA_VALUE_LEN, 32))
	mechanism := uint(cryptoki.CKM_AES_KEY_GEN)
	for _, o := range overrides {
		i := slices.IndexFunc(template, func(a *cryptoki.Attribute) bool { return a.Type == o.Type })
		if i < 0 {
			template = append(template, o)
		} else {
			template[i] = o
		}
		if o.Type == cryptoki.CKA_KEY_TYPE && string(o.Value) == string(cryptoki.NewAttribute(0, cryptoki.CKK_GENERIC_SECRET).Value) {
			mechanism = cryptoki.CKM_GENERIC_SECRET_KEY_GEN
		}
	}
	tok.Admin(t, func(ctx *cryptoki.Ctx, s cryptoki.SessionHandle) {
		_, err := ctx.GenerateKey(s, []*cryptoki.Mechanism{cryptoki.NewMechanism(mechanism, nil)}, template)
		require.NoError(t, err, "C_GenerateKey %s", label)
	})
}

// ImportKey creates an AES key labelled label with a known value (for a
// test that checks the wrap format against a local KEK): sensitive and
// not extractable from now on, though it was known outside the token.
func (tok *Token) ImportKey(t testing.TB, label string, value []byte) {
	t.Helper()
	template := append(aesKeyTemplate(label), cryptoki.NewAttribute(cryptoki.CKA_VALUE, value))
	tok.Admin(t, func(ctx *cryptoki.Ctx, s cryptoki.SessionHandle) {
		_, err := ctx.CreateObject(s, template)
		require.NoError(t, err, "C_CreateObject %s", label)
	})
}

// findKey returns the handle of the key labelled label.
func findKey(t testing.TB, ctx *cryptoki.Ctx, s cryptoki.SessionHandle, label string) cryptoki.ObjectHandle {
	t.Helper()
	require.NoError(t, ctx.FindObjectsInit(s, []*cryptoki.Attribute{cryptoki.NewAttribute(cryptoki.CKA_LABEL, label)}))
	handles, _, err := ctx.FindObjects(s, 2)
	require.NoError(t, ctx.FindObjectsFinal(s))
	require.NoError(t, err)
	require.Len(t, handles, 1, "keys labelled %q", label)
	return handles[0]
}

// SetKeyAttributes changes attributes of the key labelled label, e.g.
// CKA_ENCRYPT=false to take its use away.
func (tok *Token) SetKeyAttributes(t testing.TB, label string, attrs ...*cryptoki.Attribute) {
	t.Helper()
	tok.Admin(t, func(ctx *cryptoki.Ctx, s cryptoki.SessionHandle) {
		require.NoError(t, ctx.SetAttributeValue(s, findKey(t, ctx, s, label), attrs))
	})
}

// DeleteKey destroys the key labelled label.
func (tok *Token) DeleteKey(t testing.TB, label string) {
	t.Helper()
	tok.Admin(t, func(ctx *cryptoki.Ctx, s cryptoki.SessionHandle) {
		require.NoError(t, ctx.DestroyObject(s, findKey(t, ctx, s, label)))
	})
}

// Remove pulls the token out: its files go, and SoftHSM answers for it
// no more (a general error for the token, invalid handles for its keys).
func (tok *Token) Remove(t testing.TB) {
	t.Helper()
	require.NoError(t, os.RemoveAll(tok.Dir))
}

// CloseAllSessions closes every session of this process with the token,
// as a token reset or a reconnect to a network HSM does; the login goes
// with them.
func (tok *Token) CloseAllSessions(t testing.TB) {
	t.Helper()
	require.NoError(t, tok.ctx.CloseAllSessions(tok.Slot))
}

// SetUserPIN changes the user PIN inside the token (the PIN file stays as
// it is).
func (tok *Token) SetUserPIN(t testing.TB, oldPIN, newPIN string) {
	t.Helper()
	tok.Admin(t, func(ctx *cryptoki.Ctx, s cryptoki.SessionHandle) {
		require.NoError(t, ctx.SetPIN(s, oldPIN, newPIN))
	})
}
