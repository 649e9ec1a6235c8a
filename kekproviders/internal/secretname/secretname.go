// Package secretname validates the name of a systemd credential or a
// Docker secret: a single path element, so a URI cannot make a provider
// read a file outside its directory.
package secretname

import (
	"fmt"
	"strings"
)

// Check returns an error when name is not a plain file name.
func Check(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("no name given")
	case name == "." || name == "..":
		return fmt.Errorf("name %q is not a file name", name)
	case strings.ContainsAny(name, "/\\\x00"):
		return fmt.Errorf("name %q must not contain '/', '\\' or NUL", name)
	case len(name) > 255:
		return fmt.Errorf("name is %d bytes, longer than a file name can be", len(name))
	}
	return nil
}
