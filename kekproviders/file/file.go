// Package file loads a local KEK from a file holding 32 raw bytes or
// base64 text. The systemd and docker providers are this provider with a
// conventional directory.
package file

import (
	"fmt"
	"io"
	"os"

	"github.com/keybroker/keybroker/kekproviders/localkek"
)

// maxFileSize bounds what is read: a KEK file is 32 bytes or ~45 of text.
const maxFileSize = 4096

// Open reads the KEK at path.
func Open(id, path string, allowDevKey bool) (*localkek.KEK, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("file: %w", err)
	}
	defer f.Close()
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
