// Package file loads a local KEK from a file holding 32 raw bytes or
// base64 text, and refuses one that group or others may read or write.
// The systemd and docker providers read their files through it too, with
// a conventional directory and without that check: their access is set by
// systemd and by the container engine.
package file

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/keybroker/keybroker/kekproviders/localkek"
)

// maxFileSize bounds what is read: a KEK file is 32 bytes or ~45 of text.
const maxFileSize = 4096

// looseBits are the permission bits a KEK file must not have: any access
// by group or others.
const looseBits fs.FileMode = 0o077

// ModeError is the error for a KEK file that group or others may read or
// write. Its message carries the chmod that fixes it.
type ModeError struct {
	Path   string      // the path as configured
	Target string      // the file Path resolves to, when that is another path
	Mode   fs.FileMode // the file's permission bits
}

func (e *ModeError) Error() string {
	where := e.Path
	if e.Target != "" {
		where += " (a link to " + e.Target + ")"
	}
	return fmt.Sprintf("file: %s has mode %04o: a KEK file must be readable by its owner only, not by group or others: chmod 600 %s",
		where, uint32(e.Mode), shellQuote(e.Path))
}

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
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("file: %w", err)
	}
	defer f.Close()
	if checkMode {
		if err := checkPermissions(f, path); err != nil {
			return nil, err
		}
	}
	buf, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("file: read %s: %w", path, err)
	}
	if len(buf) > maxFileSize {
		return nil, fmt.Errorf("file: %s is larger than %d bytes; is it really a KEK?", path, maxFileSize)
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

// checkPermissions checks the open file itself (fstat), so the mode judged
// is that of the very file read, wherever the path's links led.
func checkPermissions(f *os.File, path string) error {
	if runtime.GOOS == "windows" {
		return nil // no POSIX permission bits to judge
	}
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("file: %w", err)
	}
	if info.Mode().Perm()&looseBits == 0 {
		return nil
	}
	e := &ModeError{Path: path, Mode: info.Mode().Perm()}
	if target, err := filepath.EvalSymlinks(path); err == nil && target != filepath.Clean(path) {
		e.Target = target
	}
	return e
}

// shellQuote quotes path for a shell command line when it needs it.
func shellQuote(path string) string {
	if path != "" && strings.Trim(path, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:@,") == "" {
		return path
	}
	return "'" + strings.ReplaceAll(path, "'", `'\''`) + "'"
}
