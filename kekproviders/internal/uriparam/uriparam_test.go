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
	return New("test", u)
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
