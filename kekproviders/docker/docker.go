// Package docker loads a local KEK from a Docker (or Compose, or Swarm)
// secret: the file /run/secrets/<name> the engine mounts into a container
// that lists the secret. The secret holds 32 raw bytes or base64 text, as
// the file provider reads it.
package docker

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/keybroker/keybroker/kekproviders/file"
	"github.com/keybroker/keybroker/kekproviders/internal/secretname"
	"github.com/keybroker/keybroker/kekproviders/localkek"
)

// DefaultDirectory is where Docker mounts secrets inside a container.
const DefaultDirectory = "/run/secrets"

// Config names the secret.
type Config struct {
	// ID is the KEK id recorded on every row it wraps.
	ID string
	// Name is the secret's name (its file name under Directory).
	Name string
	// Directory is where secrets are mounted; empty means
	// DefaultDirectory. Tests point it at a temporary directory.
	Directory string
	// AllowDevKey accepts the all-zero key (dev mode only).
	AllowDevKey bool
}

// Open reads the secret and returns the KEK. A missing secret fails with a
// message saying how to grant it in a compose file.
func Open(cfg Config) (*localkek.KEK, error) {
	if err := secretname.Check(cfg.Name); err != nil {
		return nil, fmt.Errorf("docker: secret: %w", err)
	}
	dir := cfg.Directory
	if dir == "" {
		dir = DefaultDirectory
	}
	path := filepath.Join(dir, cfg.Name)
	// The engine sets the secret's mode (Swarm: 0444 by default; Compose:
	// the host file's, bind-mounted) inside a container of its own, so the
	// host file is what to guard: no mode check here.
	kek, err := file.OpenManaged(cfg.ID, path, cfg.AllowDevKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("docker: no secret %q at %s: declare it under the top-level secrets: and list it in the keybroker service's secrets:", cfg.Name, path)
	}
	if err != nil {
		return nil, fmt.Errorf("docker: secret %q: %w", cfg.Name, err)
	}
	return kek, nil
}
