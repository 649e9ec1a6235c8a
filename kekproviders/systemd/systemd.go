// Package systemd loads a local KEK from a systemd credential: the file
// $CREDENTIALS_DIRECTORY/<name> that systemd provides to a service with
// LoadCredential=<name>:<path> or LoadCredentialEncrypted=<name>:<path>
// (sealed with systemd-creds, possibly to the TPM). systemd decrypts an
// encrypted credential before the service starts, so both look alike here.
//
// The credential holds 32 raw bytes or base64 text, as the file provider
// reads it.
package systemd

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/keybroker/keybroker/kekproviders/file"
	"github.com/keybroker/keybroker/kekproviders/internal/secretname"
	"github.com/keybroker/keybroker/kekproviders/localkek"
)

// DirectoryVariable is the environment variable systemd sets to the
// directory of the service's credentials.
const DirectoryVariable = "CREDENTIALS_DIRECTORY"

// Config names the credential.
type Config struct {
	// ID is the KEK id recorded on every row it wraps.
	ID string
	// Name is the credential name, as in LoadCredential=<name>:….
	Name string
	// Directory is the value of $CREDENTIALS_DIRECTORY. Empty means the
	// service is not running under systemd with credentials.
	Directory string
	// AllowDevKey accepts the all-zero key (dev mode only).
	AllowDevKey bool
}

// Open reads the credential and returns the KEK. It fails with a message
// naming the unit setting to add when $CREDENTIALS_DIRECTORY is unset or
// the credential is missing.
func Open(cfg Config) (*localkek.KEK, error) {
	if err := secretname.Check(cfg.Name); err != nil {
		return nil, fmt.Errorf("systemd: credential: %w", err)
	}
	if cfg.Directory == "" {
		return nil, fmt.Errorf("systemd: $%s is not set: run keybroker as a systemd service with LoadCredential=%s:/path/to/kek (or LoadCredentialEncrypted=)", DirectoryVariable, cfg.Name)
	}
	if !filepath.IsAbs(cfg.Directory) {
		return nil, fmt.Errorf("systemd: $%s=%q is not an absolute path", DirectoryVariable, cfg.Directory)
	}
	// systemd sets the credential's mode (0400, in a directory only the
	// unit's user may enter) and answers for it: no mode check here.
	kek, err := file.OpenManaged(cfg.ID, filepath.Join(cfg.Directory, cfg.Name), cfg.AllowDevKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("systemd: no credential %q in $%s (%s): add LoadCredential=%s:/path/to/kek or LoadCredentialEncrypted=%s:/path/to/kek.cred to the unit", cfg.Name, DirectoryVariable, cfg.Directory, cfg.Name, cfg.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("systemd: credential %q: %w", cfg.Name, err)
	}
	return kek, nil
}
