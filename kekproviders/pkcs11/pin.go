package pkcs11

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// maxPINSize bounds what is read from a PIN file: PINs are short (a
// CloudHSM "user:password" pair included).
const maxPINSize = 1024

// looseBits are the permission bits a PIN file must not have, as for a
// file:// KEK: any access by group or others.
const looseBits fs.FileMode = 0o077

// PINModeError is the error for a PIN file that group or others may read
// or write. Its message carries the chmod that fixes it.
type PINModeError struct {
	Path   string      // the path as configured
	Target string      // the file Path resolves to, when that is another path
	Mode   fs.FileMode // the file's permission bits
}

func (e *PINModeError) Error() string {
	where := e.Path
	if e.Target != "" {
		where += " (a link to " + e.Target + ")"
	}
	return fmt.Sprintf("pkcs11: PIN file %s has mode %04o: a PIN file must be readable by its owner only, not by group or others: chmod 600 %s",
		where, uint32(e.Mode), shellQuote(e.Path))
}

// readPIN reads the PIN of src. A file of the file: kind must give group
// and others no access (checked on the open file, wherever links led); a
// systemd credential's mode is systemd's. The PIN is never part of an
// error.
func readPIN(src pinSource) ([]byte, error) {
	f, err := os.Open(src.path)
	if errors.Is(err, fs.ErrNotExist) && src.managed {
		name := filepath.Base(src.path)
		return nil, fmt.Errorf("pkcs11: no credential %q in $%s (%s): add LoadCredential=%s:/path/to/pin or LoadCredentialEncrypted=%s:/path/to/pin.cred to the unit",
			name, CredentialsDirectoryVariable, filepath.Dir(src.path), name, name)
	}
	if err != nil {
		return nil, fmt.Errorf("pkcs11: PIN: %w", err)
	}
	defer f.Close()
	if !src.managed {
		if err := checkPINMode(f, src.path); err != nil {
			return nil, err
		}
	}
	buf, err := io.ReadAll(io.LimitReader(f, maxPINSize+1))
	if err != nil {
		clear(buf)
		return nil, fmt.Errorf("pkcs11: read PIN file %s: %w", src.path, err)
	}
	if len(buf) > maxPINSize {
		clear(buf)
		return nil, fmt.Errorf("pkcs11: PIN file %s is larger than %d bytes; is it really a PIN?", src.path, maxPINSize)
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

func checkPINMode(f *os.File, path string) error {
	if runtime.GOOS == "windows" {
		return nil // no POSIX permission bits to judge
	}
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("pkcs11: PIN: %w", err)
	}
	if info.Mode().Perm()&looseBits == 0 {
		return nil
	}
	e := &PINModeError{Path: path, Mode: info.Mode().Perm()}
	if target, err := filepath.EvalSymlinks(path); err == nil && target != filepath.Clean(path) {
		e.Target = target
	}
	return e
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
			path, uint32(info.Mode().Perm()), shellQuote(path))
	}
	return nil
}

// shellQuote quotes path for a shell command line when it needs it.
func shellQuote(path string) string {
	if path != "" && strings.Trim(path, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:@,") == "" {
		return path
	}
	return "'" + strings.ReplaceAll(path, "'", `'\''`) + "'"
}
