//go:build cgo

package pkcs11

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"strings"

	cryptoki "github.com/miekg/pkcs11"

	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/internal/binding"
)

func (k *KEK) openToken() error {
	slot, info, err := k.findToken()
	if err != nil {
		return err
	}
	k.slot, k.label, k.serial = slot, info.Label, info.SerialNumber
	s, err := k.session()
	if err != nil {
		return err
	}
	key, err := k.findKey(s)
	if err == nil {
		err = k.selfTest(s, key)
	}
	k.release(s, err == nil)
	return err
}

// findToken returns the one slot whose token matches the selector.
func (k *KEK) findToken() (uint, cryptoki.TokenInfo, error) {
	slots, err := k.p.GetSlotList(true)
	if err != nil {
		return 0, cryptoki.TokenInfo{}, classify(fmt.Errorf("C_GetSlotList: %w", err))
	}
	type found struct {
		slot uint
		info cryptoki.TokenInfo
	}
	var matches []found
	var seen []string
	for _, slot := range slots {
		info, err := k.p.GetTokenInfo(slot)
		if err != nil || info.Flags&cryptoki.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		seen = append(seen, fmt.Sprintf("token=%q serial=%q (slot-id=%d)", info.Label, info.SerialNumber, slot))
		if k.sel.matches(slot, info) {
			matches = append(matches, found{slot, info})
		}
	}
	switch len(matches) {
	case 1:
		return matches[0].slot, matches[0].info, nil
	case 0:
		if len(seen) == 0 {
			return 0, cryptoki.TokenInfo{}, kek.Unavailable(fmt.Errorf("the module %s sees no initialized token", k.mod.path))
		}
		return 0, cryptoki.TokenInfo{}, fmt.Errorf("no token matches %s; the module sees: %s", k.sel, strings.Join(seen, ", "))
	default:
		return 0, cryptoki.TokenInfo{}, fmt.Errorf("%d tokens match %s (%s): add serial= or slot-id= to the URI", len(matches), k.sel, strings.Join(seen, ", "))
	}
}

func (s Selector) matches(slot uint, info cryptoki.TokenInfo) bool {
	return (s.SlotID == nil || *s.SlotID == slot) &&
		(s.TokenLabel == "" || s.TokenLabel == info.Label) &&
		(s.Manufacturer == "" || s.Manufacturer == info.ManufacturerID) &&
		(s.Model == "" || s.Model == info.Model) &&
		(s.Serial == "" || s.Serial == info.SerialNumber)
}

// findKey finds the one secret key the selector names and checks it.
func (k *KEK) findKey(s cryptoki.SessionHandle) (cryptoki.ObjectHandle, error) {
	template := []*cryptoki.Attribute{cryptoki.NewAttribute(cryptoki.CKA_CLASS, cryptoki.CKO_SECRET_KEY)}
	if k.sel.Object != "" {
		template = append(template, cryptoki.NewAttribute(cryptoki.CKA_LABEL, k.sel.Object))
	}
	if k.sel.ObjectID != nil {
		template = append(template, cryptoki.NewAttribute(cryptoki.CKA_ID, k.sel.ObjectID))
	}
	if err := k.p.FindObjectsInit(s, template); err != nil {
		return 0, classify(errorf("find the key: C_FindObjectsInit", err))
	}
	handles, _, err := k.p.FindObjects(s, 2)
	if ferr := k.p.FindObjectsFinal(s); err == nil {
		err = ferr
	}
	if err != nil {
		return 0, classify(errorf("find the key: C_FindObjects", err))
	}
	switch len(handles) {
	case 0:
		return 0, kek.Denied(fmt.Errorf("no secret key %s on the token (or the PIN's user may not see it)", k.sel))
	case 1:
	default:
		return 0, fmt.Errorf("more than one secret key matches %s: add id= (the key's CKA_ID) to the URI", k.sel)
	}
	key := handles[0]
	return key, k.checkKey(s, key)
}

// checkKey refuses a key that is not a non-extractable AES-256 token key
// allowed to encrypt and decrypt.
func (k *KEK) checkKey(s cryptoki.SessionHandle, key cryptoki.ObjectHandle) error {
	keyType, err := k.ulongAttr(s, key, cryptoki.CKA_KEY_TYPE)
	if err != nil {
		return err
	}
	if keyType != cryptoki.CKK_AES {
		return fmt.Errorf("the key is not an AES key (CKA_KEY_TYPE 0x%X)", keyType)
	}
	size, err := k.ulongAttr(s, key, cryptoki.CKA_VALUE_LEN)
	if err != nil {
		return err
	}
	if size != keyBytes {
		return fmt.Errorf("the key is AES-%d: keybroker's KEKs are AES-256 (CKA_VALUE_LEN 32)", size*8)
	}
	flags := map[uint]bool{}
	for _, typ := range []uint{cryptoki.CKA_TOKEN, cryptoki.CKA_SENSITIVE, cryptoki.CKA_EXTRACTABLE, cryptoki.CKA_ENCRYPT, cryptoki.CKA_DECRYPT} {
		if flags[typ], err = k.boolAttr(s, key, typ); err != nil {
			return err
		}
	}
	if !flags[cryptoki.CKA_TOKEN] {
		return fmt.Errorf("the key is a session object, gone with its session: generate it with CKA_TOKEN=true")
	}
	if flags[cryptoki.CKA_EXTRACTABLE] || !flags[cryptoki.CKA_SENSITIVE] {
		return fmt.Errorf("the key can leave the token (CKA_EXTRACTABLE=%t, CKA_SENSITIVE=%t): a KEK must be generated inside the token with CKA_SENSITIVE=true and CKA_EXTRACTABLE=false, so that no one can read it out; generate a new key that way (docs/providers.md#pkcs11-hardware-security-modules)",
			flags[cryptoki.CKA_EXTRACTABLE], flags[cryptoki.CKA_SENSITIVE])
	}
	if !flags[cryptoki.CKA_ENCRYPT] || !flags[cryptoki.CKA_DECRYPT] {
		return kek.Denied(fmt.Errorf("the key may not encrypt and decrypt (CKA_ENCRYPT=%t, CKA_DECRYPT=%t)", flags[cryptoki.CKA_ENCRYPT], flags[cryptoki.CKA_DECRYPT]))
	}
	return nil
}

func (k *KEK) attr(s cryptoki.SessionHandle, obj cryptoki.ObjectHandle, typ uint) ([]byte, error) {
	attrs, err := k.p.GetAttributeValue(s, obj, []*cryptoki.Attribute{cryptoki.NewAttribute(typ, nil)})
	if err != nil {
		return nil, classify(errorf(fmt.Sprintf("read attribute 0x%X of the key", typ), err))
	}
	return attrs[0].Value, nil
}

func (k *KEK) boolAttr(s cryptoki.SessionHandle, obj cryptoki.ObjectHandle, typ uint) (bool, error) {
	v, err := k.attr(s, obj, typ)
	if err != nil {
		return false, err
	}
	if len(v) != 1 {
		return false, fmt.Errorf("the key's attribute 0x%X is %d bytes, not a CK_BBOOL", typ, len(v))
	}
	return v[0] != 0, nil
}

func (k *KEK) ulongAttr(s cryptoki.SessionHandle, obj cryptoki.ObjectHandle, typ uint) (uint64, error) {
	v, err := k.attr(s, obj, typ)
	if err != nil {
		return 0, err
	}
	switch len(v) {
	case 8:
		return binary.NativeEndian.Uint64(v), nil
	case 4:
		return uint64(binary.NativeEndian.Uint32(v)), nil
	default:
		return 0, fmt.Errorf("the key's attribute 0x%X is %d bytes, not a CK_ULONG", typ, len(v))
	}
}

// selfTestBinding is the binding of the self-test's wraps.
func (k *KEK) selfTestBinding(user string) []byte {
	return binding.AAD(map[string]string{
		kek.BindingUserID: user,
		kek.BindingKEKID:  k.id,
		kek.BindingFormat: "2",
	})
}

// selfTest makes a wrap with key and checks that the token opens it under
// its binding, returns the same bytes, and refuses it under another
// binding. It learns the module's answer to a tag mismatch and keeps the
// wrap as the canary; then key is the KEK's key.
func (k *KEK) selfTest(s cryptoki.SessionHandle, key cryptoki.ObjectHandle) error {
	plaintext := make([]byte, keyBytes)
	rand.Read(plaintext)
	aad := k.selfTestBinding("keybroker:pkcs11-self-test")
	wrapped, err := k.encrypt(s, key, plaintext, aad)
	if rv, ok := rvOf(err); ok && rv == cryptoki.CKR_MECHANISM_INVALID {
		return fmt.Errorf("self-test: the token does not offer CKM_AES_GCM, which keybroker needs (pkcs11-tool --list-mechanisms shows a token's mechanisms): %w", err)
	}
	if err != nil {
		return classify(errorf("self-test: wrap", err))
	}
	back, err := k.decrypt(s, key, wrapped, aad)
	if err != nil {
		return classify(errorf("self-test: unwrap", err))
	}
	if subtle.ConstantTimeCompare(back, plaintext) != 1 {
		return fmt.Errorf("self-test: the token's AES-GCM decrypt returned other bytes than it encrypted")
	}
	_, err = k.decrypt(s, key, wrapped, k.selfTestBinding("keybroker:pkcs11-self-test-other"))
	if err == nil {
		return fmt.Errorf("self-test: the token opened a wrap under another binding: its CKM_AES_GCM ignores the additional authenticated data; it cannot bind wraps to their rows")
	}
	rv, ok := rvOf(err)
	if !ok {
		return errorf("self-test: unwrap under another binding", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.key, k.canary = key, wrapped
	if !tagMismatchRVs[rv] {
		k.tagFailure = rv
	}
	return nil
}
