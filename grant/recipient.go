package grant

import (
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Algorithm is how a mission data key is wrapped to a recipient.
type Algorithm string

// The algorithms. A recipient's public key decides its algorithm.
const (
	// RSAOAEP256 is RSA-OAEP with SHA-256 (and MGF1-SHA-256), as
	// WebCrypto's {name: "RSA-OAEP", hash: "SHA-256"}: the upstream's
	// wrap. The upstream's unnamed grant has no label (WrapUnbound); a
	// grant to a named recipient has BindingInfo as its OAEP label.
	RSAOAEP256 Algorithm = "rsa-oaep-256"
	// HPKEX25519 is HPKE (RFC 9180) in base mode with DHKEM(X25519,
	// HKDF-SHA256), HKDF-SHA256 and AES-256-GCM; info is BindingInfo.
	HPKEX25519 Algorithm = "hpke-x25519"
	// HPKEMLKEM768X25519 is the same with the hybrid ML-KEM-768 + X25519
	// KEM (X-Wing, draft-ietf-hpke-pq): a wrap captured today stays
	// closed to a future quantum computer unless ML-KEM-768 falls too.
	HPKEMLKEM768X25519 Algorithm = "hpke-mlkem768-x25519"
)

// Algorithms lists every algorithm.
func Algorithms() []Algorithm { return []Algorithm{RSAOAEP256, HPKEX25519, HPKEMLKEM768X25519} }

// PEM block types of X-Wing keys, which have no standard SPKI or PKCS#8
// encoding in the standard library: the public key is the KEM's
// serialised public key (1 216 bytes: the ML-KEM-768 encapsulation key
// ‖ the X25519 public key), the private key its 32-byte seed. RSA and
// X25519 keys are the standard "PUBLIC KEY" (SPKI) and "PRIVATE KEY"
// (PKCS#8) blocks that openssl writes.
const (
	PEMTypeXWingPublicKey  = "MLKEM768X25519 PUBLIC KEY"
	PEMTypeXWingPrivateKey = "MLKEM768X25519 PRIVATE KEY"
)

// MinRSABits is the smallest RSA modulus a recipient may have.
const MinRSABits = 2048

// The HPKE suite besides the KEM: the KDF and the AEAD of every HPKE
// wrap.
func hpkeKDF() hpke.KDF   { return hpke.HKDFSHA256() }
func hpkeAEAD() hpke.AEAD { return hpke.AES256GCM() }

func (a Algorithm) kem() (hpke.KEM, bool) {
	switch a {
	case HPKEX25519:
		return hpke.DHKEM(ecdh.X25519()), true
	case HPKEMLKEM768X25519:
		return hpke.MLKEM768X25519(), true
	}
	return nil, false
}

// ErrUnwrap is a wrapped key that does not open: another recipient's,
// altered, or bound to other terms than the ones given.
var ErrUnwrap = errors.New("grant: the wrapped key does not open with this key under these terms")

// Recipient is a worker that grants are wrapped to: a name and a public
// key.
type Recipient struct {
	name        string
	alg         Algorithm
	rsa         *rsa.PublicKey
	hpke        hpke.PublicKey
	fingerprint string
}

// DefaultRecipient is the name of the upstream's one recipient, whose
// key MANA_AI_PUBLIC_KEY_PEM holds: a request that names no recipient
// gets a grant for it.
const DefaultRecipient = "default"

// MaxRecipientNameBytes bounds a recipient's name.
const MaxRecipientNameBytes = 63

// CheckRecipientName accepts 1 to 63 bytes of lower-case letters,
// digits, '.', '_' and '-', starting with a letter or digit: a name that
// fits in a log line, a metric label and an audit row as it is.
func CheckRecipientName(name string) error {
	if name == "" || len(name) > MaxRecipientNameBytes {
		return inputErrorf("recipient name must be 1 to %d characters", MaxRecipientNameBytes)
	}
	for i, c := range []byte(name) {
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return inputErrorf("recipient name %q: use lower-case letters, digits, '.', '_' and '-', starting with a letter or digit", name)
		}
	}
	return nil
}

// ParseRecipient reads a recipient's public key from one PEM block:
//   - "PUBLIC KEY" (SPKI) of an RSA key of at least MinRSABits:
//     RSAOAEP256;
//   - "PUBLIC KEY" (SPKI) of an X25519 key: HPKEX25519;
//   - PEMTypeXWingPublicKey: HPKEMLKEM768X25519.
//
// Anything else, a second block or text after the block is refused.
func ParseRecipient(name string, pemData []byte) (*Recipient, error) {
	if err := CheckRecipientName(name); err != nil {
		return nil, fmt.Errorf("grant: %w", err)
	}
	block, err := onePEMBlock(pemData)
	if err != nil {
		return nil, fmt.Errorf("grant: recipient %s: %w", name, err)
	}
	r := &Recipient{name: name}
	switch block.Type {
	case "PUBLIC KEY":
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("grant: recipient %s: not an SPKI public key: %w", name, err)
		}
		switch pub := pub.(type) {
		case *rsa.PublicKey:
			if pub.N.BitLen() < MinRSABits {
				return nil, fmt.Errorf("grant: recipient %s: RSA key of %d bits; at least %d", name, pub.N.BitLen(), MinRSABits)
			}
			r.alg, r.rsa = RSAOAEP256, pub
		case *ecdh.PublicKey:
			if pub.Curve() != ecdh.X25519() {
				return nil, fmt.Errorf("grant: recipient %s: an ECDH key that is not X25519", name)
			}
			if r.hpke, err = hpke.NewDHKEMPublicKey(pub); err != nil {
				return nil, fmt.Errorf("grant: recipient %s: %w", name, err)
			}
			r.alg = HPKEX25519
		default:
			return nil, fmt.Errorf("grant: recipient %s: a %T public key; use RSA (2048 bits or more), X25519 or %s", name, pub, PEMTypeXWingPublicKey)
		}
	case PEMTypeXWingPublicKey:
		kem, _ := HPKEMLKEM768X25519.kem()
		if r.hpke, err = kem.NewPublicKey(block.Bytes); err != nil {
			return nil, fmt.Errorf("grant: recipient %s: not an ML-KEM-768 + X25519 public key: %w", name, err)
		}
		r.alg = HPKEMLKEM768X25519
	default:
		return nil, fmt.Errorf("grant: recipient %s: a PEM block of type %q; want \"PUBLIC KEY\" or %q", name, block.Type, PEMTypeXWingPublicKey)
	}
	sum := sha256.Sum256(block.Bytes)
	r.fingerprint = "sha256:" + base64.RawURLEncoding.EncodeToString(sum[:])
	return r, nil
}

// onePEMBlock decodes data as exactly one PEM block, with nothing but
// white space around it.
func onePEMBlock(data []byte) (*pem.Block, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	if len(block.Headers) != 0 {
		return nil, errors.New("PEM headers are not expected")
	}
	for _, c := range rest {
		if c != ' ' && c != '\n' && c != '\r' && c != '\t' {
			return nil, errors.New("more than one PEM block, or text after it")
		}
	}
	return block, nil
}

// Name is the recipient's name.
func (r *Recipient) Name() string { return r.name }

// Algorithm is the algorithm of the recipient's key.
func (r *Recipient) Algorithm() Algorithm { return r.alg }

// Fingerprint identifies the public key: "sha256:" and the unpadded
// base64url SHA-256 of the PEM block's bytes (the SPKI DER, or the
// serialised X-Wing key).
func (r *Recipient) Fingerprint() string { return r.fingerprint }

// Wrap wraps the mission data key mdk to r, bound to the terms t and to
// r's name and algorithm (BindingInfo): as the OAEP label for RSA, as
// the HPKE info otherwise. The result is the RSA-OAEP ciphertext, or
// HPKE's enc ‖ ciphertext.
func (r *Recipient) Wrap(mdk []byte, t Terms) ([]byte, error) {
	if len(mdk) != KeySize {
		return nil, fmt.Errorf("grant: mission data key is %d bytes, want %d", len(mdk), KeySize)
	}
	info := BindingInfo(r.alg, r.name, t)
	if r.rsa != nil {
		return rsa.EncryptOAEP(sha256.New(), rand.Reader, r.rsa, mdk, info)
	}
	return hpke.Seal(r.hpke, hpkeKDF(), hpkeAEAD(), info, mdk)
}

// WrapUnbound wraps mdk as the upstream did: RSA-OAEP without a label,
// bound to nothing. Only the default recipient's unnamed grants use it;
// an HPKE recipient is refused.
func (r *Recipient) WrapUnbound(mdk []byte) ([]byte, error) {
	if r.rsa == nil {
		return nil, fmt.Errorf("grant: recipient %s: the unbound (upstream) wrap is RSA-OAEP only", r.name)
	}
	if len(mdk) != KeySize {
		return nil, fmt.Errorf("grant: mission data key is %d bytes, want %d", len(mdk), KeySize)
	}
	return rsa.EncryptOAEP(sha256.New(), rand.Reader, r.rsa, mdk, nil)
}

// Check wraps a random key to r under sample terms, as a start-up check
// that the key can be used: an X25519 key of low order, for one, parses
// but cannot be wrapped to.
func (r *Recipient) Check() error {
	probe := make([]byte, KeySize)
	rand.Read(probe)
	defer clear(probe)
	d := Derivation{Version: Version, MissionID: "check", Tables: []string{"t"}, RecordIDs: []string{"t:1"}}
	if _, err := r.Wrap(probe, NewTerms(d, time.Now(), nil)); err != nil {
		return fmt.Errorf("grant: recipient %s: a trial wrap failed: %w", r.name, err)
	}
	return nil
}

// bindingLabel starts BindingInfo.
const bindingLabel = "keybroker mission grant v1\x00"

// BindingInfo is what a wrap to a named recipient is bound to: the
// label "keybroker mission grant v1" and a zero byte, then, each as
// uint32be(len) ‖ bytes, the algorithm, the recipient's name, the
// derivation version, the missionId and the 32-byte ScopeDigest, then
// the issue and expiry times as int64be milliseconds since the Unix
// epoch. A wrapped key presented with any other scope, lifetime,
// recipient or algorithm does not open.
func BindingInfo(alg Algorithm, recipient string, t Terms) []byte {
	d := t.Derivation
	digest := d.ScopeDigest()
	info := make([]byte, 0, len(bindingLabel)+5*4+len(alg)+len(recipient)+len(d.Version)+len(d.MissionID)+len(digest)+16)
	info = append(info, bindingLabel...)
	for _, field := range [][]byte{[]byte(alg), []byte(recipient), []byte(d.Version), []byte(d.MissionID), digest[:]} {
		info = lengthPrefixed(info, field)
	}
	info = binary.BigEndian.AppendUint64(info, uint64(t.IssuedAt.UnixMilli()))
	return binary.BigEndian.AppendUint64(info, uint64(t.ExpiresAt.UnixMilli()))
}

// Recipients is the configured set of recipients, by name.
type Recipients struct {
	byName map[string]*Recipient
	names  []string
}

// NewRecipients returns the set of list. Names must be distinct; the
// one named DefaultRecipient, if any, receives the requests that name no
// recipient, and must be RSA-OAEP: the upstream's unbound wrap is an
// RSA-OAEP one.
func NewRecipients(list ...*Recipient) (*Recipients, error) {
	rs := &Recipients{byName: map[string]*Recipient{}}
	for _, r := range list {
		if rs.byName[r.name] != nil {
			return nil, fmt.Errorf("grant: recipient %s is configured twice", r.name)
		}
		if r.name == DefaultRecipient && r.alg != RSAOAEP256 {
			return nil, fmt.Errorf("grant: the default recipient must have an RSA key (the upstream's RSA-OAEP wrap), not %s", r.alg)
		}
		rs.byName[r.name] = r
		rs.names = append(rs.names, r.name)
	}
	slices.Sort(rs.names)
	return rs, nil
}

// Lookup returns the recipient named name; "" is the default recipient.
// A nil set has none.
func (rs *Recipients) Lookup(name string) (*Recipient, bool) {
	if rs == nil {
		return nil, false
	}
	if name == "" {
		name = DefaultRecipient
	}
	r, ok := rs.byName[name]
	return r, ok
}

// All returns the recipients in name order.
func (rs *Recipients) All() []*Recipient {
	if rs == nil {
		return nil
	}
	out := make([]*Recipient, 0, len(rs.names))
	for _, n := range rs.names {
		out = append(out, rs.byName[n])
	}
	return out
}

// Len is the number of recipients.
func (rs *Recipients) Len() int {
	if rs == nil {
		return 0
	}
	return len(rs.names)
}
