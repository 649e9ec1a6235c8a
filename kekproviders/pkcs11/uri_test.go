package pkcs11_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/kekproviders/pkcs11"
)

// The refusals below happen before any module is loaded, so they hold in
// the static build too.

// TestPINInTheURIIsRefused: a PIN written into the URI — where logs,
// `ps` and the environment show it — is refused, and the error never
// repeats it.
func TestPINInTheURIIsRefused(t *testing.T) {
	t.Parallel()
	const pin = "s3cr3t-PIN-9876"
	cases := map[string]string{
		"QueryPINValue":         "pkcs11:token=t;object=k?module-path=/m.so&pin-value=" + pin + "&id=hsm-1",
		"QueryPINValueAndFile":  "pkcs11:token=t;object=k?module-path=/m.so&pin-source=file:/p&pin-value=" + pin + "&id=hsm-1",
		"PathPINValue":          "pkcs11:token=t;object=k;pin-value=" + pin + "?module-path=/m.so&pin-source=file:/p&id=hsm-1",
		"PINAsSource":           "pkcs11:token=t;object=k?module-path=/m.so&pin-source=" + pin + "&id=hsm-1",
		"PINInUnknownParameter": "pkcs11:token=t;object=k?module-path=/m.so&pin=" + pin + "&pin-source=file:/p&id=hsm-1",
	}
	for name, uri := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := kekproviders.Open(t.Context(), uri)
			require.Error(t, err)
			require.NotContains(t, err.Error(), pin, "the error repeats the PIN")
			if strings.Contains(name, "PINValue") {
				require.ErrorContains(t, err, "pin-value")
				require.ErrorContains(t, err, "pin-source=file:")
			}
		})
	}
}

func TestURIRefusals(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pinFile := filepath.Join(dir, "pin")
	require.NoError(t, os.WriteFile(pinFile, []byte("1234\n"), 0o600))
	const q = "?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/p&id=hsm-1"
	cases := []struct{ name, uri, want string }{
		{"DoubleSlash", "pkcs11://token=t;object=k" + q, "pkcs11"},
		{"UnknownPathAttribute", "pkcs11:token=t;objekt=k" + q, `unknown URI path attribute "objekt"`},
		{"NoToken", "pkcs11:object=k" + q, "names no token"},
		{"NoObject", "pkcs11:token=t" + q, "names no key"},
		{"NotASecretKey", "pkcs11:token=t;object=k;type=private" + q, "type=secret-key"},
		{"RepeatedAttribute", "pkcs11:token=t;token=u;object=k" + q, "given twice"},
		{"BadSlotID", "pkcs11:token=t;object=k;slot-id=x" + q, "slot-id"},
		{"LabelTooLong", "pkcs11:token=" + strings.Repeat("t", 33) + ";object=k" + q, "at most 32"},
		{"NoValue", "pkcs11:token;object=k" + q, "no '='"},
		{"BadEscape", "pkcs11:token=%zz;object=k" + q, ""},
		{"ModuleName", "pkcs11:token=t;object=k?module-name=softhsm2&pin-source=file:/p&id=hsm-1", "module-path="},
		{"MisspeltParameter", "pkcs11:token=t;object=k" + q + "&timeuot=1s", "timeuot"},
		{"ZeroSessions", "pkcs11:token=t;object=k" + q + "&max_sessions=0", "max_sessions"},
		{"BadTimeout", "pkcs11:token=t;object=k" + q + "&timeout=soon", "timeout"},
		{"Cached", "pkcs11:token=t;object=k" + q + "&cache=on", "cache="},
		{"NoID", "pkcs11:token=t;object=k?module-path=/m.so&pin-source=file:/p", "id="},
		{"NoModule", "pkcs11:token=t;object=k?pin-source=file:/p&id=hsm-1", "module-path="},
		{"RelativeModule", "pkcs11:token=t;object=k?module-path=libsofthsm2.so&pin-source=file:/p&id=hsm-1", "absolute"},
		{"NoPIN", "pkcs11:token=t;object=k?module-path=/m.so&id=hsm-1", "pin-source="},
		{"RelativePINFile", "pkcs11:token=t;object=k?module-path=/m.so&pin-source=file:pin&id=hsm-1", "absolute"},
		{"PINFileOnAnotherHost", "pkcs11:token=t;object=k?module-path=/m.so&pin-source=file://host/pin&id=hsm-1", "host"},
		{"CredentialOutsideItsDirectory", "pkcs11:token=t;object=k?module-path=/m.so&pin-source=systemd-credential:../pin&id=hsm-1", "credential"},
		{"CredentialWithoutSystemd", "pkcs11:token=t;object=k?module-path=/m.so&pin-source=systemd-credential:hsm-pin&id=hsm-1", "$CREDENTIALS_DIRECTORY is not set"},
	}
	opener := kekproviders.Opener{Getenv: func(string) string { return "" }}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := opener.Open(t.Context(), tc.uri)
			require.Error(t, err)
			require.ErrorContains(t, err, tc.want)
			require.False(t, errors.Is(err, pkcs11.ErrNotCompiled), "refused for the build, not for the URI: %v", err)
		})
	}
}

func TestParsePath(t *testing.T) {
	t.Parallel()
	sel, err := pkcs11.ParsePath("token=My%20Token;manufacturer=SoftHSM%20project;model=SoftHSM%20v2;serial=0a1b;slot-id=7;object=kek%3b2025;id=%01%A2;type=secret-key")
	require.NoError(t, err)
	require.Equal(t, "My Token", sel.TokenLabel)
	require.Equal(t, "SoftHSM project", sel.Manufacturer)
	require.Equal(t, "SoftHSM v2", sel.Model)
	require.Equal(t, "0a1b", sel.Serial)
	require.NotNil(t, sel.SlotID)
	require.Equal(t, uint(7), *sel.SlotID)
	require.Equal(t, "kek;2025", sel.Object)
	require.Equal(t, []byte{0x01, 0xA2}, sel.ObjectID)
	again, err := pkcs11.ParsePath(strings.TrimPrefix(sel.String(), "pkcs11:"))
	require.NoError(t, err)
	require.Equal(t, sel, again, "String renders a path that parses to the same selector")
}

// TestStaticBuildSaysSo: without cgo, a valid pkcs11: URI fails with the
// message that names the build that has PKCS#11. (make test runs with
// cgo; `CGO_ENABLED=0 go test ./kekproviders/pkcs11` runs this, and
// deploy's TestStaticBinaryRefusesPKCS11 checks the static binary.)
func TestStaticBuildSaysSo(t *testing.T) {
	if pkcs11.Supported {
		t.Skip("built with cgo: PKCS#11 is supported (CGO_ENABLED=0 go test runs this)")
	}
	dir := t.TempDir()
	pinFile := filepath.Join(dir, "pin")
	require.NoError(t, os.WriteFile(pinFile, []byte("1234\n"), 0o600))
	_, err := kekproviders.Open(t.Context(), "pkcs11:token=t;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:"+pinFile+"&id=hsm-1")
	require.ErrorIs(t, err, pkcs11.ErrNotCompiled)
	require.ErrorContains(t, err, "built without PKCS#11 support; build with `make build-pkcs11` (cgo) or use the keybroker:pkcs11 image")
	require.False(t, kekproviders.PKCS11Supported)
}
