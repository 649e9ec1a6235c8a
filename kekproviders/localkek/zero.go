package localkek

import (
	"reflect"
	"unsafe"
)

// zeroPointee overwrites with zeros the value v points to — v is a
// pointer, or an interface holding one, such as the *aes.Block and the
// *gcm.GCM of the standard library — and reports whether it did.
//
// The standard library offers no way to erase a cipher's key schedule, and
// the AES-256 schedule begins with the key itself. These values are owned
// by one KEK and referenced from nowhere else, so overwriting them in
// place is what erasing them means. It is done only when the type holds
// no pointer anywhere (checked through reflection, as the field layout is
// the standard library's to change): overwriting a pointer behind the
// garbage collector's back would be unsafe, while plain memory is not.
func zeroPointee(v any) bool {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return false
	}
	t := rv.Type().Elem()
	if !pointerFree(t) || t.Size() == 0 {
		return false
	}
	clear(unsafe.Slice((*byte)(rv.UnsafePointer()), t.Size()))
	return true
}

// pointerFree reports whether a value of type t contains no pointer.
func pointerFree(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return true
	case reflect.Array:
		return t.Len() == 0 || pointerFree(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if !pointerFree(t.Field(i).Type) {
				return false
			}
		}
		return true
	default: // pointers, slices, strings, maps, interfaces, funcs, channels, uintptr
		return false
	}
}
