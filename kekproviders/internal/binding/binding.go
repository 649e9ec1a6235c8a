// Package binding encodes a binding context (the map a wrap is bound to)
// as the bytes that byte-oriented AEADs authenticate.
//
// Encoding: for each key in ascending byte order, the key's length as a
// 4-byte big-endian unsigned integer, the key, the value's length in the
// same form, the value. An empty or nil context encodes to nil (no AAD),
// which is what format-1 wraps use.
//
// Example: {"format":"2","kek_id":"env-v1","user_id":"alice"} encodes to
//
//	00000006 "format" 00000001 "2"
//	00000006 "kek_id" 00000006 "env-v1"
//	00000007 "user_id" 00000005 "alice"
package binding

import (
	"encoding/binary"
	"slices"
)

// AAD returns the canonical encoding of binding.
func AAD(binding map[string]string) []byte {
	if len(binding) == 0 {
		return nil
	}
	// On the stack for the contexts keybroker binds (three keys): the
	// keys are only sorted here.
	var keysBuf [4]string
	keys := keysBuf[:0]
	size := 0
	for k, v := range binding {
		keys = append(keys, k)
		size += 8 + len(k) + len(v)
	}
	slices.Sort(keys)
	out := make([]byte, 0, size)
	for _, k := range keys {
		out = binary.BigEndian.AppendUint32(out, uint32(len(k)))
		out = append(out, k...)
		v := binding[k]
		out = binary.BigEndian.AppendUint32(out, uint32(len(v)))
		out = append(out, v...)
	}
	return out
}
