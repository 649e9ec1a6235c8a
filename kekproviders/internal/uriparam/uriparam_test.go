package uriparam

import (
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func parse(t *testing.T, raw string) *Params {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	return New("test", u, raw)
}

func TestKnownParametersAreRead(t *testing.T) {
	p := parse(t, "x://key?region=eu-central-1&timeout=250ms&max_attempts=2")
	require.Equal(t, "eu-central-1", p.String("region"))
	require.Equal(t, 250*time.Millisecond, p.Duration("timeout"))
	n, ok := p.Int("max_attempts")
	require.True(t, ok)
	require.Equal(t, 2, n)
	_, ok = p.Int("absent")
	require.False(t, ok)
	require.NoError(t, p.Done())
}

func TestMisspeltParameterIsAnError(t *testing.T) {
	p := parse(t, "x://key?regoin=eu-central-1")
	require.Empty(t, p.String("region"))
	err := p.Done()
	require.ErrorContains(t, err, "regoin")
	require.ErrorContains(t, err, "known: id, region")
}

func TestBadValuesAreErrors(t *testing.T) {
	for _, raw := range []string{"x://k?timeout=soon", "x://k?timeout=-1s", "x://k?max_attempts=-2", "x://k?region=a&region=b"} {
		p := parse(t, raw)
		p.Duration("timeout")
		p.Int("max_attempts")
		p.String("region")
		require.Error(t, p.Done(), raw)
	}
}

func TestSuggest(t *testing.T) {
	known := []string{"id", "region", "timeout", "token_file"}
	for name, want := range map[string]string{
		"idd": "id", "ID": "id", "kid": "id", "regoin": "region", "timout": "timeout", "tokenfile": "token_file",
		"pin": "", "token": "", "secret": "", "region": "",
	} {
		require.Equal(t, want, Suggest(name, known), name)
	}
}

func TestRedactKeepsTheQueryHidesSecrets(t *testing.T) {
	for raw, want := range map[string]string{
		"file:///k?idd=kek-1":                             "file:///k?idd=kek-1",
		"vault-transit://k?id=a&token=hvs.x":              "vault-transit://k?id=a&token=REDACTED",
		"vault-transit://u:pw@k?id=a&role_id=r1":          "vault-transit://u:REDACTED@k?id=a&role_id=REDACTED",
		"awskms:///alias/k?id=a&region=eu-central-1#frag": "awskms:///alias/k?id=a&region=eu-central-1",
		"pkcs11:token=t;object=k?pin-value=1234&id=h":     "pkcs11:token=t;object=k?pin-value=REDACTED&id=h",
	} {
		require.Equal(t, want, Redact(raw), raw)
	}
}
