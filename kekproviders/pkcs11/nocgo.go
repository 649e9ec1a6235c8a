//go:build !cgo

package pkcs11

import (
	"context"
	"fmt"

	"github.com/keybroker/keybroker/kek"
)

// Supported reports whether this binary was built with PKCS#11 support
// (cgo): it was not.
const Supported = false

// Open validates cfg and fails with ErrNotCompiled: PKCS#11 modules are C
// libraries, and this binary was built without cgo.
func Open(_ context.Context, cfg Config) (kek.KEK, error) {
	if _, err := cfg.validate(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("pkcs11 %s: open %s: %w", cfg.ID, cfg.Selector, ErrNotCompiled)
}
