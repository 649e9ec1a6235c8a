package kekproviders_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/kekproviders/internal/uriparam"
)

// kekIDPattern is the documented shape of a KEK id.
var kekIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$`)

// uriSeeds are KEK URIs of every scheme, well-formed and not.
var uriSeeds = []string{
	"env://MANA_AUTH_KEK",
	"env://MANA_AUTH_KEK?id=env-v2",
	"env:MANA_AUTH_KEK",
	"env://OTHER?id=other",
	"env://MISSING?id=m",
	"env://ZERO?id=z",
	"env://SHORT?id=s",
	"env://MANA_AUTH_KEK?id=a&id=b",
	"env://MANA_AUTH_KEK?id=x&cache=off",
	"env://MANA_AUTH_KEK?id=bad id",
	"env://MANA_AUTH_KEK?id=" + strings.Repeat("i", 70),
	"env://MANA_AUTH_KEK?id=x&token=s3cr3t-t0ken",
	"env://user:p4ssw0rd@MANA_AUTH_KEK?id=x",
	"file:///KEYDIR/good?id=file-1",
	"file:///KEYDIR/raw?id=file-2",
	"file:///KEYDIR/zero?id=file-3",
	"file:///KEYDIR/big?id=file-4",
	"file:///KEYDIR/missing?id=file-5",
	"file:///KEYDIR?id=file-6",
	"file://KEYDIR/good?id=f",
	"file:?id=f",
	"FILE:///KEYDIR/good?id=upper",
	"awskms:///alias/kb?id=aws-1&region=eu-central-1&cache=maybe",
	"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k?id=gcp-1",
	"vault-transit://kb?id=vt-1&auth=approle&secret_id_file=/x",
	"nope://x?id=y",
	"://",
	"%zz",
	"",
	" env://MANA_AUTH_KEK ",
	"vault-transit://k?id=x&token=SUPERSECRET\x01",
	"vault-transit://us%zzer:SUPERSECRET@k?id=x",
	"pkcs11:token=kb;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/keybroker/hsm-pin&id=hsm-1",
	"pkcs11:token=kb;object=kek;id=%01%a2?module-path=/m.so&pin-value=s3cr3t-PIN&id=hsm-1",
	"pkcs11:token=kb;object=kek?id=hsm-1&cache=on",
	"pkcs11://token=kb;object=kek?id=hsm-1",
}

// FuzzParseURI: ParseURI never panics; what it accepts has an id of the
// documented shape, a lower-case scheme, and no id or cache parameter left
// in the provider's URL; cache=on|off is accepted only on remote schemes.
func FuzzParseURI(f *testing.F) {
	for _, s := range uriSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		p, err := kekproviders.ParseURI(uri)
		if err != nil {
			require.Nil(t, p)
			require.True(t, strings.HasPrefix(err.Error(), "kekproviders: "), "error without the package prefix: %v", err)
			for _, secret := range uriSecrets(uri) {
				require.NotContains(t, err.Error(), secret, "an error repeats a password or parameter value")
			}
			return
		}
		require.Regexp(t, kekIDPattern, p.ID)
		require.Equal(t, strings.ToLower(p.Scheme), p.Scheme)
		q := p.URL.Query()
		require.False(t, q.Has("id"), "id left in the provider URL")
		require.False(t, q.Has("cache"), "cache left in the provider URL")
		if p.Cached {
			require.True(t, kekproviders.Remote(p.Scheme), "a local KEK in cached mode")
		}
	})
}

// uriSecrets returns what an operator may have put in a URI that must
// not reach a log: the userinfo password and the values of parameters
// other than id and cache — those of at least 6 bytes that appear nowhere
// else in the URI (a value that is also the path is not secret).
func uriSecrets(uri string) []string {
	u, err := url.Parse(strings.TrimSpace(uri))
	if err != nil {
		// Unparseable: the query and the userinfo as written are secret.
		var out []string
		if _, query, ok := strings.Cut(uri, "?"); ok && len(query) >= 6 {
			out = append(out, query)
		}
		if _, rest, ok := strings.Cut(uri, "://"); ok {
			if userinfo, _, ok := strings.Cut(rest, "@"); ok && len(userinfo) >= 6 {
				out = append(out, userinfo)
			}
		}
		return out
	}
	var candidates []string
	if pw, ok := u.User.Password(); ok {
		candidates = append(candidates, pw)
	}
	for name, values := range u.Query() {
		// Errors echo the URI with the values of the known public
		// parameters (names, paths, addresses) and of their likely
		// misspellings; every other value is a secret.
		if !uriparam.Shown(name) {
			candidates = append(candidates, values...)
		}
	}
	rest := u.Scheme + u.Opaque + u.Host + u.Path + u.Query().Get("id") + u.User.Username()
	var out []string
	for _, c := range candidates {
		if len(c) >= 6 && !strings.Contains(rest, c) {
			out = append(out, c)
		}
	}
	return out
}

// FuzzOpenLocal opens fuzzed env:// and file:// URIs (the other schemes
// would reach for the network and are left to their providers' tests).
// Open never panics; a KEK it returns carries the parsed id and
// round-trips; an error never repeats the key material it read.
func FuzzOpenLocal(f *testing.F) {
	dir := f.TempDir()
	good := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x5c}, 32))
	raw := bytes.Repeat([]byte{0x3a}, 32)
	short := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x17}, 16))
	files := map[string][]byte{
		"good":  []byte(good + "\n"),
		"raw":   raw,
		"zero":  make([]byte, 32),
		"short": []byte(short),
		"big":   bytes.Repeat([]byte("A"), 5000),
	}
	for name, data := range files {
		require.NoError(f, os.WriteFile(filepath.Join(dir, name), data, 0o600))
	}
	environment := map[string]string{
		kekproviders.LegacyVariable: good,
		"OTHER":                     good,
		"ZERO":                      base64.StdEncoding.EncodeToString(make([]byte, 32)),
		"SHORT":                     short,
		"SPACES":                    "  " + good + "  ",
	}
	secrets := []string{good, short, string(raw)}
	opener := kekproviders.Opener{Getenv: func(k string) string { return environment[k] }}
	for _, s := range uriSeeds {
		f.Add(strings.ReplaceAll(s, "KEYDIR", strings.TrimPrefix(dir, "/")), false)
		f.Add(strings.ReplaceAll(s, "KEYDIR", strings.TrimPrefix(dir, "/")), true)
	}
	f.Fuzz(func(t *testing.T, uri string, dev bool) {
		p, err := kekproviders.ParseURI(uri)
		if err != nil {
			return // FuzzParseURI covers refusals of the parser
		}
		switch p.Scheme {
		case kekproviders.SchemeEnv:
		case kekproviders.SchemeFile:
			// Only files of this test: the fuzzer must not read /dev/stdin
			// or a FIFO elsewhere on the machine.
			if rel, err := filepath.Rel(dir, filepath.Clean(p.URL.Path)); err != nil || strings.HasPrefix(rel, "..") || p.URL.Path == "" {
				return
			}
		default:
			return
		}
		o := opener
		o.AllowDevKeys = dev
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		kek, err := o.Open(ctx, uri)
		if err != nil {
			for _, secret := range secrets {
				require.NotContains(t, err.Error(), secret, "an error repeats key material")
			}
			return
		}
		require.Equal(t, p.ID, kek.ID())
		require.NoError(t, kekproviders.Check(ctx, kek, nil).Err())
	})
}
