// Package secretfile reads a small secret from a local file — a file://
// KEK, an HSM PIN, a Vault token or credential — the one way every
// provider does: symbolic links followed, the size bounded, and, unless
// another system answers for the file's access, a file that group or
// others may read or write refused with the chmod that fixes it.
//
// Its errors carry no package prefix: each provider adds its own.
package secretfile

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// looseBits are the permission bits a secret file must not have: any
// access by group or others.
const looseBits fs.FileMode = 0o077

// ModeError is the error for a secret file that group or others may read
// or write. Its message names what the file holds and carries the chmod
// that fixes it.
type ModeError struct {
	What   string      // what the file holds: "KEK", "PIN"
	Path   string      // the path as configured
	Target string      // the file Path resolves to, when that is another path
	Mode   fs.FileMode // the file's permission bits
}

func (e *ModeError) Error() string {
	where := e.Path
	if e.Target != "" {
		where += " (a link to " + e.Target + ")"
	}
	return fmt.Sprintf("%s has mode %04o: %s file must be readable by its owner only, not by group or others: chmod 600 %s",
		where, uint32(e.Mode), withArticle(e.What), ShellQuote(e.Path))
}

// Read reads the file at path, at most maxSize bytes, what naming what it
// holds ("KEK", "PIN"). The file it resolves to (symbolic links are
// followed) must give group and others no access at all: a secret any
// local user can read is theirs, and one they can write can be swapped.
// It fails with a *ModeError otherwise. A missing file fails with an
// error that is fs.ErrNotExist.
func Read(path string, maxSize int, what string) ([]byte, error) {
	return read(path, maxSize, what, true)
}

// ReadManaged reads the file at path as Read does, whatever its
// permission bits: for a file whose access another system sets and
// answers for — a systemd credential, a Docker secret, a Kubernetes
// service account token.
func ReadManaged(path string, maxSize int, what string) ([]byte, error) {
	return read(path, maxSize, what, false)
}

func read(path string, maxSize int, what string, checkMode bool) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if checkMode {
		if err := checkPermissions(f, path, what); err != nil {
			return nil, err
		}
	}
	buf, err := io.ReadAll(io.LimitReader(f, int64(maxSize)+1))
	if err != nil {
		clear(buf)
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(buf) > maxSize {
		clear(buf)
		return nil, fmt.Errorf("%s is larger than %d bytes; is it really %s?", path, maxSize, withArticle(what))
	}
	return buf, nil
}

// checkPermissions checks the open file itself (fstat), so the mode judged
// is that of the very file read, wherever the path's links led.
func checkPermissions(f *os.File, path, what string) error {
	if runtime.GOOS == "windows" {
		return nil // no POSIX permission bits to judge
	}
	info, err := f.Stat()
	if err != nil {
		return err
	}
	if info.Mode().Perm()&looseBits == 0 {
		return nil
	}
	e := &ModeError{What: what, Path: path, Mode: info.Mode().Perm()}
	if target, err := filepath.EvalSymlinks(path); err == nil && target != filepath.Clean(path) {
		e.Target = target
	}
	return e
}

// withArticle puts "a" or "an" before what, by its first letter: the
// names used here ("KEK", "PIN", "AppRole role id", "token") are read
// as spelt.
func withArticle(what string) string {
	if what != "" && strings.ContainsRune("AEIOUaeiou", rune(what[0])) {
		return "an " + what
	}
	return "a " + what
}

// ShellQuote quotes path for a shell command line when it needs it.
func ShellQuote(path string) string {
	if path != "" && strings.Trim(path, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:@,") == "" {
		return path
	}
	return "'" + strings.ReplaceAll(path, "'", `'\''`) + "'"
}
