//go:build cgo

package pkcs11

import (
	"fmt"
	"path/filepath"
	"sync"

	cryptoki "github.com/miekg/pkcs11"
)

// module is a loaded PKCS#11 library. A library is loaded once per
// process (dlopen hands every caller the same copy) and C_Initialize may
// be called once: the KEKs over one module share it, and the last one to
// close finalizes it.
type module struct {
	path string // the file, symbolic links resolved
	ctx  *cryptoki.Ctx
	refs int
	// finalize is false when another part of the process had initialized
	// the library already (C_Initialize said so): it is theirs to finalize.
	finalize bool
}

var modules = struct {
	sync.Mutex
	byPath map[string]*module
}{byPath: map[string]*module{}}

// loadModule loads and initializes the module at path, or takes another
// reference to it. It refuses a module that group or others may write.
func loadModule(path string) (*module, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, fmt.Errorf("module: %w", err)
	}
	if err := checkModuleMode(real); err != nil {
		return nil, err
	}
	modules.Lock()
	defer modules.Unlock()
	if m := modules.byPath[real]; m != nil {
		m.refs++
		return m, nil
	}
	ctx := cryptoki.New(real)
	if ctx == nil {
		return nil, fmt.Errorf("cannot load the module %s: not a PKCS#11 library for this machine, or a library it needs is missing", path)
	}
	m := &module{path: real, ctx: ctx, refs: 1, finalize: true}
	if err := ctx.Initialize(); err != nil {
		if rv, ok := rvOf(err); !ok || rv != cryptoki.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			ctx.Destroy()
			return nil, classify(fmt.Errorf("C_Initialize of %s: %w", path, err))
		}
		m.finalize = false
	}
	modules.byPath[real] = m
	return m, nil
}

// release drops a reference; the last one finalizes and unloads the
// module.
func (m *module) release() {
	modules.Lock()
	defer modules.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(modules.byPath, m.path)
	if m.finalize {
		_ = m.ctx.Finalize() // nothing to do about a failure on the way out
	}
	m.ctx.Destroy()
}
