// Package env loads a local KEK from an environment variable holding the
// base64 of 32 bytes — MANA_AUTH_KEK in the original service.
package env

import (
	"fmt"

	"github.com/keybroker/keybroker/kekproviders/localkek"
)

// Config selects the variable and the KEK id.
type Config struct {
	ID          string
	Variable    string
	Getenv      func(string) string
	AllowDevKey bool
}

// Open reads the variable and returns the KEK.
func Open(cfg Config) (*localkek.KEK, error) {
	if cfg.Variable == "" {
		return nil, fmt.Errorf("env: no variable named")
	}
	value := cfg.Getenv(cfg.Variable)
	if value == "" {
		return nil, fmt.Errorf("env: $%s is not set or empty", cfg.Variable)
	}
	key, err := localkek.ParseKey([]byte(value))
	if err != nil {
		return nil, fmt.Errorf("env: $%s: %w", cfg.Variable, err)
	}
	kek, err := localkek.New(cfg.ID, key, cfg.AllowDevKey)
	if err != nil {
		return nil, fmt.Errorf("env: $%s: %w", cfg.Variable, err)
	}
	return kek, nil
}
