// Package pkcs11 is a KEK held in a hardware security module (YubiHSM 2,
// Nitrokey HSM, Thales Luna, AWS CloudHSM, SoftHSM) and reached through
// the HSM vendor's PKCS#11 module. The key is an AES-256 secret key object
// on the token that is sensitive and not extractable: it never leaves the
// token, and every Wrap and Unwrap is a CKM_AES_GCM C_Encrypt or
// C_Decrypt inside it, with the binding as the GCM additional
// authenticated data.
//
// The KEK is named by a PKCS#11 URI (RFC 7512), for example
//
//	pkcs11:token=keybroker;object=kek-2025?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/keybroker/hsm-pin&id=hsm-2025
//
// The PIN is read from a file or a systemd credential (pin-source); a PIN
// in the URI (pin-value) is refused.
//
// Ciphertext layout: IV (12 bytes) ‖ ciphertext ‖ tag (16 bytes) — the
// layout of a local KEK (package localkek), so that the format is the same
// whichever side of the token boundary the key lives on. The IV is
// random (crypto/rand) unless the token writes back one it generated
// itself (CloudHSM does), in which case the token's IV is stored.
//
// The provider needs cgo: PKCS#11 modules are C shared libraries. A
// binary built with CGO_ENABLED=0 (the default `make build`, the default
// container image) has this package's URI parsing but Open fails with
// ErrNotCompiled; `make build-pkcs11` and the keybroker:pkcs11 image
// include it. Supported reports which.
package pkcs11

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keybroker/keybroker/kekproviders/internal/secretname"
)

// ErrNotCompiled is the error of Open in a binary built without cgo.
var ErrNotCompiled = errors.New("this keybroker was built without PKCS#11 support; build with `make build-pkcs11` (cgo) or use the keybroker:pkcs11 image")

// DefaultTimeout bounds one call (waiting for a session included) when
// Config.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// DefaultMaxSessions is how many sessions a KEK opens on its token at
// most, and so how many calls it has in flight at once, when
// Config.MaxSessions is zero. HSMs have few sessions (a YubiHSM 2 has 16
// for every application together).
const DefaultMaxSessions = 4

// CredentialsDirectoryVariable is the environment variable systemd sets
// to the directory of the service's credentials; a pin-source of the form
// systemd-credential:NAME reads NAME there.
const CredentialsDirectoryVariable = "CREDENTIALS_DIRECTORY"

// Selector is the path part of a PKCS#11 URI: which token, and which key
// object on it. Empty fields match anything.
type Selector struct {
	// TokenLabel is the token label (RFC 7512 "token").
	TokenLabel string
	// Manufacturer, Model and Serial are the token's manufacturer id,
	// model and serial number ("manufacturer", "model", "serial").
	Manufacturer string
	Model        string
	Serial       string
	// SlotID is the slot ("slot-id"); nil matches any slot.
	SlotID *uint
	// Object is the key object's CKA_LABEL ("object").
	Object string
	// ObjectID is the key object's CKA_ID ("id", percent-encoded bytes in
	// the URI). It is not the KEK id, which is the query's id parameter.
	ObjectID []byte
}

// path attribute names of RFC 7512 this provider reads.
const (
	attrToken        = "token"
	attrManufacturer = "manufacturer"
	attrModel        = "model"
	attrSerial       = "serial"
	attrSlotID       = "slot-id"
	attrObject       = "object"
	attrID           = "id"
	attrType         = "type"
)

var knownPathAttributes = []string{attrID, attrManufacturer, attrModel, attrObject, attrSerial, attrSlotID, attrToken, attrType}

// ParsePath reads the path attributes of a PKCS#11 URI: what follows
// "pkcs11:" up to the query, attributes separated by ';', values
// percent-encoded. It refuses an unknown or repeated attribute, a type
// other than secret-key, a URI that names no token (token, serial or
// slot-id) or no object (object or id), and a PIN in the path.
func ParsePath(path string) (Selector, error) {
	var sel Selector
	seen := map[string]bool{}
	for _, part := range strings.Split(path, ";") {
		if part == "" {
			continue
		}
		name, raw, ok := strings.Cut(part, "=")
		if !ok {
			return Selector{}, fmt.Errorf("pkcs11: URI path attribute %q has no '=': write name=value pairs separated by ';' (RFC 7512)", name)
		}
		if name == "pin-value" || name == "pin-source" {
			return Selector{}, fmt.Errorf("pkcs11: %s is a query attribute; and a PIN never goes in the URI: use ?pin-source=file:/path", name)
		}
		if !slices.Contains(knownPathAttributes, name) {
			return Selector{}, fmt.Errorf("pkcs11: unknown URI path attribute %q (known: %s)", name, strings.Join(knownPathAttributes, ", "))
		}
		if seen[name] {
			return Selector{}, fmt.Errorf("pkcs11: URI path attribute %q is given twice", name)
		}
		seen[name] = true
		value, err := url.PathUnescape(raw)
		if err != nil {
			return Selector{}, fmt.Errorf("pkcs11: URI path attribute %q: bad percent-encoding", name)
		}
		switch name {
		case attrToken:
			sel.TokenLabel, err = fixedField(name, value, 32)
		case attrManufacturer:
			sel.Manufacturer, err = fixedField(name, value, 32)
		case attrModel:
			sel.Model, err = fixedField(name, value, 16)
		case attrSerial:
			sel.Serial, err = fixedField(name, value, 16)
		case attrSlotID:
			n, perr := strconv.ParseUint(value, 10, 64)
			if perr != nil || uint64(uint(n)) != n {
				return Selector{}, fmt.Errorf("pkcs11: URI path attribute slot-id=%q: want a decimal slot number", value)
			}
			slot := uint(n)
			sel.SlotID = &slot
		case attrObject:
			if value == "" {
				return Selector{}, errors.New("pkcs11: URI path attribute object= is empty")
			}
			sel.Object = value
		case attrID:
			if value == "" {
				return Selector{}, errors.New("pkcs11: URI path attribute id= is empty")
			}
			sel.ObjectID = []byte(value)
		case attrType:
			if value != "secret-key" {
				return Selector{}, fmt.Errorf("pkcs11: URI path attribute type=%q: the KEK is an AES key, type=secret-key (or leave type out)", value)
			}
		}
		if err != nil {
			return Selector{}, err
		}
	}
	if sel.TokenLabel == "" && sel.Serial == "" && sel.SlotID == nil {
		return Selector{}, errors.New("pkcs11: the URI names no token: add token=LABEL (or serial=…, slot-id=…), e.g. pkcs11:token=keybroker;object=kek")
	}
	if sel.Object == "" && sel.ObjectID == nil {
		return Selector{}, errors.New("pkcs11: the URI names no key: add object=LABEL (or id=%XX… for the key's CKA_ID), e.g. pkcs11:token=keybroker;object=kek")
	}
	return sel, nil
}

// fixedField checks a token-info field, which PKCS#11 pads with spaces
// to a fixed length: a longer value could never match.
func fixedField(name, value string, max int) (string, error) {
	if len(value) > max {
		return "", fmt.Errorf("pkcs11: URI path attribute %s is %d bytes; PKCS#11 holds at most %d", name, len(value), max)
	}
	return strings.TrimRight(value, " "), nil
}

// String renders the selector as the path of a PKCS#11 URI, for messages.
func (s Selector) String() string {
	var parts []string
	add := func(name, value string) {
		if value != "" {
			parts = append(parts, name+"="+url.PathEscape(value))
		}
	}
	add(attrToken, s.TokenLabel)
	add(attrManufacturer, s.Manufacturer)
	add(attrModel, s.Model)
	add(attrSerial, s.Serial)
	if s.SlotID != nil {
		add(attrSlotID, strconv.FormatUint(uint64(*s.SlotID), 10))
	}
	add(attrObject, s.Object)
	if s.ObjectID != nil {
		var b strings.Builder
		for _, c := range s.ObjectID {
			fmt.Fprintf(&b, "%%%02X", c)
		}
		parts = append(parts, attrID+"="+b.String())
	}
	return "pkcs11:" + strings.Join(parts, ";")
}

// Config selects the module, the token, the key and the PIN.
type Config struct {
	// ID is the KEK id recorded on every row it wraps.
	ID string
	// ModulePath is the absolute path of the vendor's PKCS#11 module (a
	// shared library), e.g. /usr/lib/softhsm/libsofthsm2.so. It is loaded
	// into the process: it must not be writable by group or others.
	ModulePath string
	// Selector names the token and the key object on it.
	Selector Selector
	// PINSource is where the user PIN is read: "file:/path" (or
	// "file:///path"), a file readable by its owner only, or
	// "systemd-credential:NAME", the file NAME in CredentialsDirectory. A
	// single trailing newline is dropped.
	PINSource string
	// CredentialsDirectory is $CREDENTIALS_DIRECTORY, for a PINSource of
	// the systemd-credential kind.
	CredentialsDirectory string
	// Timeout bounds each call, waiting for a free session included;
	// zero means DefaultTimeout.
	Timeout time.Duration
	// MaxSessions bounds the sessions the KEK opens, and so its calls in
	// flight; zero means DefaultMaxSessions.
	MaxSessions int
}

// pinSource is a parsed Config.PINSource.
type pinSource struct {
	path    string
	managed bool // a systemd credential: systemd sets and answers for its mode
}

func (c *Config) validate() (pinSource, error) {
	if c.ID == "" {
		return pinSource{}, errors.New("pkcs11: Config.ID is empty")
	}
	if c.ModulePath == "" {
		return pinSource{}, errors.New("pkcs11: no module: add ?module-path=/path/to/the/vendor/pkcs11-module.so to the URI")
	}
	if !filepath.IsAbs(c.ModulePath) {
		return pinSource{}, fmt.Errorf("pkcs11: module-path %q is not an absolute path", c.ModulePath)
	}
	if c.Selector.TokenLabel == "" && c.Selector.Serial == "" && c.Selector.SlotID == nil {
		return pinSource{}, errors.New("pkcs11: Config.Selector names no token (Token, Serial or SlotID)")
	}
	if c.Selector.Object == "" && c.Selector.ObjectID == nil {
		return pinSource{}, errors.New("pkcs11: Config.Selector names no key (Object or ObjectID)")
	}
	if c.Timeout < 0 {
		return pinSource{}, fmt.Errorf("pkcs11: Config.Timeout is negative (%s)", c.Timeout)
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxSessions < 0 {
		return pinSource{}, fmt.Errorf("pkcs11: Config.MaxSessions is negative (%d)", c.MaxSessions)
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	return parsePINSource(c.PINSource, c.CredentialsDirectory)
}

// parsePINSource reads pin-source: file:/abs, file:///abs or
// systemd-credential:NAME.
func parsePINSource(source, credentialsDir string) (pinSource, error) {
	const usage = "use pin-source=file:/path/to/pin or pin-source=systemd-credential:NAME"
	switch {
	case source == "":
		return pinSource{}, fmt.Errorf("pkcs11: no PIN: add ?pin-source=… to the URI (%s)", usage)
	case strings.HasPrefix(source, "file:"):
		path := strings.TrimPrefix(source, "file:")
		if strings.HasPrefix(path, "//") {
			// file:///abs; file://host/… names another machine.
			rest := strings.TrimPrefix(path, "//")
			if !strings.HasPrefix(rest, "/") {
				return pinSource{}, fmt.Errorf("pkcs11: pin-source %q names a host: %s", source, usage)
			}
			path = rest
		}
		if !filepath.IsAbs(path) {
			return pinSource{}, fmt.Errorf("pkcs11: pin-source %q: the file must be an absolute path (%s)", source, usage)
		}
		return pinSource{path: filepath.Clean(path)}, nil
	case strings.HasPrefix(source, "systemd-credential:"):
		name := strings.TrimPrefix(source, "systemd-credential:")
		if err := secretname.Check(name); err != nil {
			return pinSource{}, fmt.Errorf("pkcs11: pin-source %q: credential %w", source, err)
		}
		if credentialsDir == "" {
			return pinSource{}, fmt.Errorf("pkcs11: pin-source %q: $%s is not set: run keybroker as a systemd service with LoadCredential=%s:/path/to/pin (or LoadCredentialEncrypted=)", source, CredentialsDirectoryVariable, name)
		}
		if !filepath.IsAbs(credentialsDir) {
			return pinSource{}, fmt.Errorf("pkcs11: $%s=%q is not an absolute path", CredentialsDirectoryVariable, credentialsDir)
		}
		return pinSource{path: filepath.Join(credentialsDir, name), managed: true}, nil
	default:
		// Not echoed: an operator may have put the PIN itself here.
		return pinSource{}, fmt.Errorf("pkcs11: pin-source is neither a file: nor a systemd-credential: source (%s)", usage)
	}
}
