package pkcs11

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/keybroker/keybroker/kekproviders/internal/secretfile"
)

// maxPINSize bounds what is read from a PIN file: PINs are short (a
// CloudHSM "user:password" pair included).
const maxPINSize = 1024

// PINModeError is the error for a PIN file that group or others may read
// or write, as for a file:// KEK (it is the same type as file.ModeError,
// with What "PIN"). Its message carries the chmod that fixes it.
type PINModeError = secretfile.ModeError

// readPIN reads the PIN of src. A file of the file: kind must give group
// and others no access (checked on the open file, wherever links led); a
// systemd credential's mode is systemd's. The PIN is never part of an
// error.
func readPIN(src pinSource) ([]byte, error) {
	read := secretfile.Read
	if src.managed {
		read = secretfile.ReadManaged
	}
	buf, err := read(src.path, maxPINSize, "PIN")
	if errors.Is(err, fs.ErrNotExist) && src.managed {
		name := filepath.Base(src.path)
		return nil, fmt.Errorf("pkcs11: no credential %q in $%s (%s): add LoadCredential=%s:/path/to/pin or LoadCredentialEncrypted=%s:/path/to/pin.cred to the unit",
			name, CredentialsDirectoryVariable, filepath.Dir(src.path), name, name)
	}
	if err != nil {
		return nil, fmt.Errorf("pkcs11: PIN: %w", err)
	}
	pin := buf
	switch {
	case bytes.HasSuffix(pin, []byte("\r\n")):
		pin = pin[:len(pin)-2]
	case bytes.HasSuffix(pin, []byte("\n")):
		pin = pin[:len(pin)-1]
	}
	if len(pin) == 0 {
		clear(buf)
		return nil, fmt.Errorf("pkcs11: PIN file %s is empty", src.path)
	}
	out := bytes.Clone(pin)
	clear(buf)
	return out, nil
}

// checkModuleMode refuses a module file that group or others may write:
// whoever can write it runs code inside keybroker, next to every key.
func checkModuleMode(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("module: %w", err)
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("module %s is not a regular file", path)
	}
	if runtime.GOOS != "windows" && info.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("module %s has mode %04o: group or others may write it, and so run their code inside keybroker: chmod go-w %s",
			path, uint32(info.Mode().Perm()), secretfile.ShellQuote(path))
	}
	return nil
}
