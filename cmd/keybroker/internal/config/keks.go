package config

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/keybroker/keybroker/kekproviders"
)

// KEKs are the configured KEKs, their URIs parsed once.
type KEKs struct {
	// Active makes new wraps; nil when no KEK is configured (only the
	// commands that need none run without one).
	Active *KEKSpec
	// Retired are the decrypt-only KEKs.
	Retired []KEKSpec
	// AllowDevKeys accepts the all-zero KEK (--dev).
	AllowDevKeys bool
}

// Role is what a configured KEK does.
type Role string

// The roles of a configured KEK.
const (
	RoleActive      Role = "active"
	RoleDecryptOnly Role = "decrypt-only"
)

// KEKSpec is one configured KEK.
type KEKSpec struct {
	Role Role
	// URI is the KEK's URI with $KEYBROKER_KEK_ID applied: what the
	// provider opens. It may carry a token: never print it.
	URI    string
	ID     string
	Scheme string
	// Cached is the cached envelope mode of a remote KEK.
	Cached bool
	// Dev is the dev KEK of the data directory, which serve --dev
	// generates when it is missing.
	Dev bool
	// Setting names where it is configured, for messages:
	// "$KEYBROKER_KEK (--kek)", "$MANA_AUTH_KEK", "the dev KEK".
	Setting string
}

// All lists the active KEK, then the decrypt-only ones.
func (k KEKs) All() []KEKSpec {
	if k.Active == nil {
		return k.Retired
	}
	return append([]KEKSpec{*k.Active}, k.Retired...)
}

// Roles maps each configured KEK id to its role; empty without a KEK.
func (k KEKs) Roles() map[string]Role {
	roles := map[string]Role{}
	for _, spec := range k.All() {
		roles[spec.ID] = spec.Role
	}
	return roles
}

// ErrNoKEK is a command that needs a KEK, run with none configured.
var ErrNoKEK = errors.New(`no KEK configured.
  Generate one:   keybroker kek generate
  and set it:     MANA_AUTH_KEK=<that value>   (or KEYBROKER_KEK=<a KEK URI>)
  Guard it like a database password: without it no stored key can be opened.
  For a throwaway local run only, pass --dev`)

// resolveKEKs parses the KEK settings into c.KEKs. The active KEK is
// $KEYBROKER_KEK, else env://MANA_AUTH_KEK when that is set (the
// original service's variable), else with --dev the dev KEK of the data
// directory. A KEK that does not parse is left out and reported.
func (c *Config) resolveKEKs(getenv func(string) string) Problems {
	var problems Problems
	active, setting := c.raw[kekURI], kekURI.name()
	switch {
	case active == "" && getenv(EnvLegacyKEK) != "":
		active, setting = "env://"+EnvLegacyKEK, "$"+EnvLegacyKEK
	case active == "" && c.Dev:
		u := url.URL{Scheme: kekproviders.SchemeFile, Path: c.DevKEKPath(), RawQuery: "id=" + DevKEKID}
		active, setting = u.String(), "the dev KEK"
	case active == "":
		problems = append(problems, ErrNoKEK)
	}
	if active != "" {
		var err error
		if id := c.raw[kekID]; id != "" {
			active, err = withID(active, id)
		}
		if err == nil {
			c.KEKs.Active, err = parseSpec(active, RoleActive)
		}
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", setting, err))
		} else {
			c.KEKs.Active.Dev = setting == "the dev KEK"
			c.KEKs.Active.Setting = setting
		}
	}
	for _, uri := range SplitList(c.raw[kekRetired]) {
		spec, err := parseSpec(uri, RoleDecryptOnly)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", kekRetired.name(), err))
			continue
		}
		spec.Setting = kekRetired.name()
		c.KEKs.Retired = append(c.KEKs.Retired, *spec)
	}
	return problems
}

func parseSpec(uri string, role Role) (*KEKSpec, error) {
	p, err := kekproviders.ParseURI(uri)
	if err != nil {
		return nil, err
	}
	return &KEKSpec{Role: role, URI: uri, ID: p.ID, Scheme: p.Scheme, Cached: p.Cached}, nil
}

// withID sets the id parameter of a KEK URI.
func withID(uri, id string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil {
		// A *url.Error quotes the whole URI, which may carry a token.
		var urlErr *url.Error
		if errors.As(err, &urlErr) {
			err = urlErr.Err
		}
		return "", fmt.Errorf("KEK URI: %w", err)
	}
	q := u.Query()
	if q.Has("id") && q.Get("id") != id {
		return "", fmt.Errorf("the KEK id is given twice, differently: in %s and in the KEK URI", kekID.name())
	}
	q.Set("id", id)
	u.RawQuery = q.Encode()
	return u.String(), nil
}
