package grant_test

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hpke"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/grant"
	"github.com/keybroker/keybroker/internal/testkit/testvectors"
)

var update = flag.Bool("update", false, "rewrite testdata/grant-wrap-vectors.json")

// TestUpstreamRSAVector: the upstream's WebCrypto RSA-OAEP wrap opens to
// the vector's mission data key, and a wrap made here opens with the
// upstream's key the same way (WebCrypto's decrypt takes no label).
func TestUpstreamRSAVector(t *testing.T) {
	t.Parallel()
	vectors := testvectors.LoadGrant(t)
	of := vectors.Grant(t, vectors.RSAOAEP.Of)
	priv, err := grant.ParsePrivateKey([]byte(vectors.RSAOAEP.PrivateKeyPEM))
	require.NoError(t, err)
	require.Equal(t, grant.RSAOAEP256, priv.Algorithm())
	mdk, err := priv.UnwrapUnbound(b64(t, vectors.RSAOAEP.WrappedMDK))
	require.NoError(t, err)
	require.Equal(t, of.MDK, base64.StdEncoding.EncodeToString(mdk))

	r, err := grant.ParseRecipient(grant.DefaultRecipient, []byte(vectors.RSAOAEP.PublicKeyPEM))
	require.NoError(t, err)
	require.Equal(t, grant.RSAOAEP256, r.Algorithm())
	wrapped, err := r.WrapUnbound(mdk)
	require.NoError(t, err)
	require.Len(t, wrapped, 256)
	// As WebCrypto would open it: RSA-OAEP, SHA-256, no label.
	der, _ := pem.Decode([]byte(vectors.RSAOAEP.PrivateKeyPEM))
	key, err := x509.ParsePKCS8PrivateKey(der.Bytes)
	require.NoError(t, err)
	plain, err := rsa.DecryptOAEP(sha256.New(), nil, key.(*rsa.PrivateKey), wrapped, nil)
	require.NoError(t, err)
	require.Equal(t, mdk, plain)
}

// wrapVector is one wrap of testdata/grant-wrap-vectors.json: a fixed
// key pair, fixed terms, and a wrap made once and kept, so that a change
// of the format (the suite, the layout, the binding) fails here.
type wrapVector struct {
	Algorithm     grant.Algorithm `json:"algorithm"`
	Recipient     string          `json:"recipient"`
	PrivateKeyPEM string          `json:"private_key_pem"`
	PublicKeyPEM  string          `json:"public_key_pem"`
	MissionID     string          `json:"missionId"`
	Tables        []string        `json:"tables"`
	RecordIDs     []string        `json:"recordIds"`
	IssuedAt      string          `json:"issuedAt"`
	ExpiresAt     string          `json:"expiresAt"`
	ScopeDigest   string          `json:"scope_digest"`
	BindingInfo   string          `json:"binding_info_hex"`
	MDK           string          `json:"mdk_base64"`
	WrappedKey    string          `json:"wrapped_key_base64"`
}

type wrapVectors struct {
	About   string       `json:"about"`
	Vectors []wrapVector `json:"vectors"`
}

func wrapVectorsPath() string {
	return filepath.Join(filepath.Dir(testvectors.GrantPath()), "grant-wrap-vectors.json")
}

func (v wrapVector) terms(t *testing.T) grant.Terms {
	t.Helper()
	d, err := grant.NewDerivation(v.MissionID, v.Tables, v.RecordIDs)
	require.NoError(t, err)
	issued, err := time.Parse(time.RFC3339Nano, v.IssuedAt)
	require.NoError(t, err)
	expires, err := time.Parse(time.RFC3339Nano, v.ExpiresAt)
	require.NoError(t, err)
	return grant.Terms{Derivation: d, IssuedAt: issued, ExpiresAt: expires}
}

// TestWrapKnownAnswers opens the kept wraps of every algorithm with their
// fixed keys: the binding info, the suite and the layout (RSA-OAEP
// ciphertext; HPKE enc ‖ ciphertext) are pinned. -update makes the file
// again (fresh wraps, the same keys).
func TestWrapKnownAnswers(t *testing.T) {
	t.Parallel()
	if *update {
		writeWrapVectors(t)
	}
	raw, err := os.ReadFile(wrapVectorsPath())
	require.NoError(t, err)
	var file wrapVectors
	require.NoError(t, json.Unmarshal(raw, &file))
	require.Len(t, file.Vectors, len(grant.Algorithms()))
	for _, v := range file.Vectors {
		t.Run(string(v.Algorithm), func(t *testing.T) {
			priv, err := grant.ParsePrivateKey([]byte(v.PrivateKeyPEM))
			require.NoError(t, err)
			require.Equal(t, v.Algorithm, priv.Algorithm())
			pub, err := priv.PublicPEM()
			require.NoError(t, err)
			require.Equal(t, v.PublicKeyPEM, string(pub))
			terms := v.terms(t)
			require.Equal(t, v.ScopeDigest, terms.Derivation.ScopeDigestString())
			require.Equal(t, v.BindingInfo, hex.EncodeToString(grant.BindingInfo(v.Algorithm, v.Recipient, terms)))
			wrapped := b64(t, v.WrappedKey)
			switch v.Algorithm {
			case grant.HPKEX25519:
				require.Len(t, wrapped, 32+32+16, "enc ‖ AES-256-GCM(mdk)")
			case grant.HPKEMLKEM768X25519:
				require.Len(t, wrapped, 1120+32+16, "enc ‖ AES-256-GCM(mdk)")
			}
			mdk, err := priv.Unwrap(wrapped, v.Recipient, terms)
			require.NoError(t, err)
			require.Equal(t, v.MDK, base64.StdEncoding.EncodeToString(mdk))
		})
	}
}

// writeWrapVectors makes testdata/grant-wrap-vectors.json: the upstream's
// RSA test key, and HPKE keys derived from fixed seeds.
func writeWrapVectors(t *testing.T) {
	vectors := testvectors.LoadGrant(t)
	basic := vectors.Grant(t, "fixed/basic")
	file := wrapVectors{About: "Wraps of vector fixed/basic's mission data key to a named recipient of each algorithm, bound to the terms given (docs/grants.md). Made by `go test ./grant -run TestWrapKnownAnswers -update`; the keys are test data only."}
	for _, alg := range grant.Algorithms() {
		var privPEM []byte
		switch alg {
		case grant.RSAOAEP256:
			privPEM = []byte(vectors.RSAOAEP.PrivateKeyPEM)
		case grant.HPKEX25519:
			k, err := hpke.DHKEM(ecdh.X25519()).DeriveKeyPair(bytes.Repeat([]byte{0x25}, 32))
			require.NoError(t, err)
			raw, err := k.Bytes()
			require.NoError(t, err)
			x, err := ecdh.X25519().NewPrivateKey(raw)
			require.NoError(t, err)
			der, err := x509.MarshalPKCS8PrivateKey(x)
			require.NoError(t, err)
			privPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
		case grant.HPKEMLKEM768X25519:
			k, err := hpke.MLKEM768X25519().DeriveKeyPair(bytes.Repeat([]byte{0x76}, 32))
			require.NoError(t, err)
			raw, err := k.Bytes()
			require.NoError(t, err)
			privPEM = pem.EncodeToMemory(&pem.Block{Type: grant.PEMTypeXWingPrivateKey, Bytes: raw})
		}
		priv, err := grant.ParsePrivateKey(privPEM)
		require.NoError(t, err)
		pubPEM, err := priv.PublicPEM()
		require.NoError(t, err)
		name := "worker-" + strings.TrimPrefix(string(alg), "hpke-")
		r, err := grant.ParseRecipient(name, pubPEM)
		require.NoError(t, err)
		v := wrapVector{
			Algorithm: alg, Recipient: name, PrivateKeyPEM: string(privPEM), PublicKeyPEM: string(pubPEM),
			MissionID: basic.Derivation.MissionID, Tables: basic.Derivation.Tables, RecordIDs: basic.Derivation.RecordIDs,
			IssuedAt: "2026-05-01T10:00:00.000Z", ExpiresAt: "2026-05-08T10:00:00.000Z", MDK: basic.MDK,
		}
		terms := v.terms(t)
		v.ScopeDigest = terms.Derivation.ScopeDigestString()
		v.BindingInfo = hex.EncodeToString(grant.BindingInfo(alg, name, terms))
		wrapped, err := r.Wrap(b64(t, basic.MDK), terms)
		require.NoError(t, err)
		v.WrappedKey = base64.StdEncoding.EncodeToString(wrapped)
		file.Vectors = append(file.Vectors, v)
	}
	out, err := json.MarshalIndent(file, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(wrapVectorsPath(), append(out, '\n'), 0o644))
}

// TestBindingInfoLayout builds the binding info of docs/grants.md by hand
// and compares.
func TestBindingInfoLayout(t *testing.T) {
	t.Parallel()
	d, err := grant.NewDerivation("m-1", []string{"notes"}, []string{"notes:a"})
	require.NoError(t, err)
	issued := time.UnixMilli(1_777_000_000_123).UTC()
	terms := grant.Terms{Derivation: d, IssuedAt: issued, ExpiresAt: issued.Add(time.Hour)}
	digest := d.ScopeDigest()
	var want bytes.Buffer
	want.WriteString("keybroker mission grant v1\x00")
	for _, f := range []string{"hpke-x25519", "worker-1", "v1", "m-1", string(digest[:])} {
		want.Write(binary.BigEndian.AppendUint32(nil, uint32(len(f))))
		want.WriteString(f)
	}
	want.Write(binary.BigEndian.AppendUint64(nil, 1_777_000_000_123))
	want.Write(binary.BigEndian.AppendUint64(nil, 1_777_003_600_123))
	require.Equal(t, want.Bytes(), grant.BindingInfo(grant.HPKEX25519, "worker-1", terms))
}

// newRecipient makes a key pair of alg and its recipient named name.
func newRecipient(t *testing.T, alg grant.Algorithm, name string) (*grant.PrivateKey, *grant.Recipient) {
	t.Helper()
	priv, err := grant.GenerateKey(alg)
	require.NoError(t, err)
	r, err := priv.Recipient(name)
	require.NoError(t, err)
	require.Equal(t, alg, r.Algorithm())
	require.NoError(t, r.Check())
	return priv, r
}

// TestWrappedKeyOpensUnderNoOtherTerms is the replay attack on a grant:
// someone holding a wrapped key (a captured grant) presents it with a
// wider scope, a longer lifetime, as another mission, to another
// recipient of the same key, or as the upstream's unbound wrap. For
// every algorithm each is refused; only the true terms open it.
func TestWrappedKeyOpensUnderNoOtherTerms(t *testing.T) {
	t.Parallel()
	d, err := grant.NewDerivation("mission-1", []string{"notes"}, []string{"notes:1"})
	require.NoError(t, err)
	terms := grant.NewTerms(d, time.Now(), nil)
	mdk := make([]byte, grant.KeySize)
	rand.Read(mdk)
	for _, alg := range grant.Algorithms() {
		t.Run(string(alg), func(t *testing.T) {
			t.Parallel()
			priv, r := newRecipient(t, alg, "worker-1")
			wrapped, err := r.Wrap(mdk, terms)
			require.NoError(t, err)
			got, err := priv.Unwrap(wrapped, "worker-1", terms)
			require.NoError(t, err)
			require.Equal(t, mdk, got)

			wider, err := grant.NewDerivation("mission-1", []string{"notes"}, []string{"notes:1", "notes:2"})
			require.NoError(t, err)
			otherMission, err := grant.NewDerivation("mission-2", []string{"notes"}, []string{"notes:1"})
			require.NoError(t, err)
			longer := terms
			longer.ExpiresAt = terms.ExpiresAt.Add(24 * time.Hour)
			earlier := terms
			earlier.IssuedAt = terms.IssuedAt.Add(-time.Millisecond)
			for name, c := range map[string]struct {
				recipient string
				terms     grant.Terms
			}{
				"WiderScope":     {"worker-1", grant.Terms{Derivation: wider, IssuedAt: terms.IssuedAt, ExpiresAt: terms.ExpiresAt}},
				"OtherMission":   {"worker-1", grant.Terms{Derivation: otherMission, IssuedAt: terms.IssuedAt, ExpiresAt: terms.ExpiresAt}},
				"LongerLifetime": {"worker-1", longer},
				"EarlierIssue":   {"worker-1", earlier},
				"OtherRecipient": {"worker-2", terms},
			} {
				_, err := priv.Unwrap(wrapped, c.recipient, c.terms)
				require.ErrorIs(t, err, grant.ErrUnwrap, name)
			}
			_, err = priv.UnwrapUnbound(wrapped)
			require.ErrorIs(t, err, grant.ErrUnwrap, "a bound wrap is no upstream grant")

			flipped := bytes.Clone(wrapped)
			flipped[len(flipped)-1] ^= 1
			_, err = priv.Unwrap(flipped, "worker-1", terms)
			require.ErrorIs(t, err, grant.ErrUnwrap)

			other, _ := newRecipient(t, alg, "worker-1")
			_, err = other.Unwrap(wrapped, "worker-1", terms)
			require.ErrorIs(t, err, grant.ErrUnwrap, "another key pair of the same algorithm")
		})
	}
	t.Run("UnboundIsNotBound", func(t *testing.T) {
		t.Parallel()
		priv, r := newRecipient(t, grant.RSAOAEP256, grant.DefaultRecipient)
		wrapped, err := r.WrapUnbound(mdk)
		require.NoError(t, err)
		_, err = priv.Unwrap(wrapped, grant.DefaultRecipient, terms)
		require.ErrorIs(t, err, grant.ErrUnwrap, "an upstream grant presented as a named one")
		_, hr := newRecipient(t, grant.HPKEX25519, "w")
		_, err = hr.WrapUnbound(mdk)
		require.ErrorContains(t, err, "RSA-OAEP only")
	})
}

// TestPrivateKeyPEMRoundTrip: a generated key written and read back opens
// what its public half wraps; Destroy leaves a key that opens nothing.
func TestPrivateKeyPEMRoundTrip(t *testing.T) {
	t.Parallel()
	d, err := grant.NewDerivation("m", []string{"t"}, []string{"t:1"})
	require.NoError(t, err)
	terms := grant.NewTerms(d, time.Now(), nil)
	mdk := bytes.Repeat([]byte{7}, 32)
	for _, alg := range grant.Algorithms() {
		t.Run(string(alg), func(t *testing.T) {
			t.Parallel()
			priv, r := newRecipient(t, alg, "w")
			privPEM, err := priv.MarshalPEM()
			require.NoError(t, err)
			again, err := grant.ParsePrivateKey(privPEM)
			require.NoError(t, err)
			wrapped, err := r.Wrap(mdk, terms)
			require.NoError(t, err)
			got, err := again.Unwrap(wrapped, "w", terms)
			require.NoError(t, err)
			require.Equal(t, mdk, got)
			again.Destroy()
			_, err = again.Unwrap(wrapped, "w", terms)
			require.ErrorContains(t, err, "destroyed")
			_, err = again.PublicPEM()
			require.Error(t, err)
		})
	}
}

// TestParseRecipientRefusesUnusableKeys: each key a worker must not be
// given refuses to parse (or, for a low-order X25519 point, to wrap), with
// a message naming the recipient.
func TestParseRecipientRefusesUnusableKeys(t *testing.T) {
	t.Parallel()
	spki := func(pub any) []byte {
		der, err := x509.MarshalPKIXPublicKey(pub)
		require.NoError(t, err)
		return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	p256, err := ecdh.P256().GenerateKey(rand.Reader)
	require.NoError(t, err)
	x, err := ecdh.X25519().GenerateKey(rand.Reader)
	require.NoError(t, err)
	good := spki(x.PublicKey())
	for name, c := range map[string]struct {
		pem  []byte
		want string
	}{
		"Empty":         {nil, "no PEM block"},
		"NotPEM":        {[]byte("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAx"), "no PEM block"},
		"SmallRSA":      {spki(&small.PublicKey), "1024 bits"},
		"P256":          {spki(mustECDSA(t, p256)), "ecdsa.PublicKey"},
		"TwoBlocks":     {append(bytes.Clone(good), good...), "more than one PEM block"},
		"TrailingText":  {append(bytes.Clone(good), "junk"...), "text after it"},
		"PrivateKey":    {pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}), "type \"PRIVATE KEY\""},
		"GarbageSPKI":   {pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1, 2, 3}}), "not an SPKI"},
		"ShortXWing":    {pem.EncodeToMemory(&pem.Block{Type: grant.PEMTypeXWingPublicKey, Bytes: make([]byte, 1215)}), "not an ML-KEM-768 + X25519"},
		"WithHeaders":   {pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Headers: map[string]string{"a": "b"}, Bytes: x.PublicKey().Bytes()}), "headers"},
		"Ed25519IsSign": {spki(ed25519Public(t)), "public key; use RSA"},
	} {
		_, err := grant.ParseRecipient("worker-1", c.pem)
		require.ErrorContains(t, err, c.want, name)
		require.ErrorContains(t, err, "worker-1", name)
	}
	lowOrder, err := grant.ParseRecipient("worker-1", spki(mustX25519(t, make([]byte, 32))))
	require.NoError(t, err, "an all-zero X25519 point parses…")
	require.ErrorContains(t, lowOrder.Check(), "trial wrap failed", "…and cannot be wrapped to")

	for _, bad := range []string{"", "Default", "-x", "a b", "ü", strings.Repeat("a", 64), "a/b"} {
		_, err := grant.ParseRecipient(bad, good)
		var input *grant.InputError
		require.True(t, errors.As(err, &input), "%q: %v", bad, err)
	}
}

func mustX25519(t *testing.T, raw []byte) *ecdh.PublicKey {
	k, err := ecdh.X25519().NewPublicKey(raw)
	require.NoError(t, err)
	return k
}

// TestRecipientsSet: names are unique, the default is RSA, "" finds the
// default, and an empty set finds nothing.
func TestRecipientsSet(t *testing.T) {
	t.Parallel()
	_, rsaDefault := newRecipient(t, grant.RSAOAEP256, grant.DefaultRecipient)
	_, xwing := newRecipient(t, grant.HPKEMLKEM768X25519, "pq")
	_, xDefault := newRecipient(t, grant.HPKEX25519, grant.DefaultRecipient)
	rs, err := grant.NewRecipients(xwing, rsaDefault)
	require.NoError(t, err)
	require.Equal(t, 2, rs.Len())
	got, ok := rs.Lookup("")
	require.True(t, ok)
	require.Same(t, rsaDefault, got)
	got, ok = rs.Lookup("pq")
	require.True(t, ok)
	require.Same(t, xwing, got)
	_, ok = rs.Lookup("nope")
	require.False(t, ok)
	require.Equal(t, []*grant.Recipient{rsaDefault, xwing}, rs.All())

	_, err = grant.NewRecipients(xwing, xwing)
	require.ErrorContains(t, err, "configured twice")
	_, err = grant.NewRecipients(xDefault)
	require.ErrorContains(t, err, "default recipient must have an RSA key")

	var none *grant.Recipients
	_, ok = none.Lookup("")
	require.False(t, ok)
	only, err := grant.NewRecipients(xwing)
	require.NoError(t, err)
	_, ok = only.Lookup("")
	require.False(t, ok, "no default without MANA_AI_PUBLIC_KEY_PEM")
}

func ed25519Public(t *testing.T) any {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return pub
}

// mustECDSA is k's public key as an ECDSA key: how SPKI carries a P-256
// key, and how x509 parses it back.
func mustECDSA(t *testing.T, k *ecdh.PrivateKey) any {
	der, err := x509.MarshalPKIXPublicKey(k.PublicKey())
	require.NoError(t, err)
	pub, err := x509.ParsePKIXPublicKey(der)
	require.NoError(t, err)
	return pub
}
