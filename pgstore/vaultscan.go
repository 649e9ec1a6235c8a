package pgstore

import (
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/keybroker/keybroker/broker"
)

// vaultPlans are the scan plans of scanVault's columns.
var vaultPlans planCache

// The nullable text columns of a vault row, as vaultRow.texts holds them.
const (
	textWrappedMK = iota
	textWrapIV
	textKeyCheck
	textRecoveryWrappedMK
	textRecoveryIV
	textKeyProof
	textRestorableWrappedMK
	textRestorableIV
	textRestorableKeyCheck
	textRestorableKeyProof
	vaultTexts
)

// vaultRow is what scanVault scans a row into, with its destinations
// made once: rows are scanned into a pooled vaultRow and copied out, and
// it is zeroed before it goes back (so that no value of a row outlives
// its read in the pool, nor is reused or aliased by the next).
//
// The nullable text columns are scanned into pgtype.Text, not into the
// Vault's *string fields: pgx allocates a string for each of those
// pointers, and scanVault's one vaultOut holds them all instead.
type vaultRow struct {
	v       broker.Vault
	r       broker.RestorableRecovery
	texts   [vaultTexts]pgtype.Text
	format  *int
	takenAt *time.Time
	scan    pgx.RowScanner
}

var vaultRows = sync.Pool{New: func() any {
	t := &vaultRow{}
	v, r, txt := &t.v, &t.r, &t.texts
	t.scan = vaultPlans.scanner(
		&v.UserID, &txt[textWrappedMK], &txt[textWrapIV], &v.FormatVersion, &v.KEKID, &txt[textKeyCheck], &v.CreatedAt, &v.RotatedAt,
		&txt[textRecoveryWrappedMK], &txt[textRecoveryIV], &v.RecoveryFormatVersion, &v.RecoverySetAt, &v.ZeroKnowledge,
		&txt[textKeyProof], &txt[textRestorableWrappedMK], &txt[textRestorableIV], &t.format, &r.SetAt,
		&txt[textRestorableKeyCheck], &txt[textRestorableKeyProof], &t.takenAt,
	)
	return t
}}

// reset zeroes what t scanned, keeping its scanner.
func (t *vaultRow) reset() { *t = vaultRow{scan: t.scan} }

// vaultOut is a vault as scanVault returns it, with the texts its
// pointers point to and its restore slot: one allocation.
type vaultOut struct {
	v     broker.Vault
	r     broker.RestorableRecovery
	texts [vaultTexts]string
}

func scanVault(row pgx.Row) (*broker.Vault, error) {
	t := vaultRows.Get().(*vaultRow)
	defer vaultRows.Put(t)
	defer t.reset()
	if err := row.Scan(t.scan); err != nil {
		return nil, err
	}
	out := &vaultOut{v: t.v}
	text := func(i int) *string {
		if !t.texts[i].Valid {
			return nil
		}
		out.texts[i] = t.texts[i].String
		return &out.texts[i]
	}
	v := &out.v
	v.WrappedMK, v.WrapIV, v.KeyCheck = text(textWrappedMK), text(textWrapIV), text(textKeyCheck)
	v.RecoveryWrappedMK, v.RecoveryIV, v.KeyProof = text(textRecoveryWrappedMK), text(textRecoveryIV), text(textKeyProof)
	// encryption_vaults_restorable_complete keeps these together.
	wrapped, iv := t.texts[textRestorableWrappedMK], t.texts[textRestorableIV]
	if wrapped.Valid && iv.Valid && t.format != nil && t.takenAt != nil {
		out.r = t.r
		r := &out.r
		r.WrappedMK, r.IV, r.FormatVersion, r.TakenAt = wrapped.String, iv.String, *t.format, *t.takenAt
		r.KeyCheck, r.KeyProof = text(textRestorableKeyCheck), text(textRestorableKeyProof)
		v.Restorable = r
	}
	return v, nil
}
