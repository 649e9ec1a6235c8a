// Package file loads a local KEK from a file holding 32 raw bytes or
// base64 text, and refuses one that group or others may read or write.
// The systemd and docker providers read their files through it too, with
// a conventional directory and without that check: their access is set by
// systemd and by the container engine.
package file

import (
	"fmt"

	"github.com/keybroker/keybroker/kekproviders/internal/secretfile"
	"github.com/keybroker/keybroker/kekproviders/localkek"
)

// maxFileSize bounds what is read: a KEK file is 32 bytes or ~45 of text.
const maxFileSize = 4096

// ModeError is the error for a KEK file that group or others may read or
// write. Its message carries the chmod that fixes it. It is the type
// every provider's secret file fails with (pkcs11.PINModeError too), its
// What saying what the file holds ("KEK" here).
type ModeError = secretfile.ModeError

// Open reads the KEK at path. The file it resolves to (symbolic links are
// followed) must give group and others no access at all: a KEK that any
// local user can read opens every stored key, and one they can write can
// be swapped. It fails with a *ModeError otherwise.
func Open(id, path string, allowDevKey bool) (*localkek.KEK, error) {
	return open(id, path, allowDevKey, true)
}

// OpenManaged reads the KEK at path whatever its permission bits: for a
// file whose access another system sets and answers for — a systemd
// credential or a Docker secret (docs/providers.md says why each is safe
// with its own rules).
func OpenManaged(id, path string, allowDevKey bool) (*localkek.KEK, error) {
	return open(id, path, allowDevKey, false)
}

func open(id, path string, allowDevKey, checkMode bool) (*localkek.KEK, error) {
	read := secretfile.ReadManaged
	if checkMode {
		read = secretfile.Read
	}
	buf, err := read(path, maxFileSize, "KEK")
	if err != nil {
		return nil, fmt.Errorf("file: %w", err)
	}
	key, err := localkek.ParseKey(buf)
	clear(buf)
	if err != nil {
		return nil, fmt.Errorf("file: %s: %w", path, err)
	}
	kek, err := localkek.New(id, key, allowDevKey)
	clear(key)
	if err != nil {
		return nil, fmt.Errorf("file: %s: %w", path, err)
	}
	return kek, nil
}
