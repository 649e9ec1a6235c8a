//go:build cgo

package pkcs11

// SetBeforeCall makes every later call of k run fn in its goroutine with
// a session taken, before the token is asked: fn blocking is a token
// that hangs (SoftHSM cannot be made to).
func SetBeforeCall(k *KEK, fn func()) { k.beforeCall = fn }

// Logins counts the C_Login calls k made.
func Logins(k *KEK) int { return int(k.logins.Load()) }

// ModuleRefs returns how many KEKs hold the module loaded from path (its
// resolved path), 0 when it is not loaded.
func ModuleRefs(path string) int {
	modules.Lock()
	defer modules.Unlock()
	if m := modules.byPath[path]; m != nil {
		return m.refs
	}
	return 0
}

// Sessions counts the sessions k has open.
func Sessions(k *KEK) int { return int(k.sessions.Load()) }
