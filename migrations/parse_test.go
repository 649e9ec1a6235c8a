package migrations

import (
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	t.Parallel()
	file := func(body string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(body)} }

	t.Run("OrdersByVersion", func(t *testing.T) {
		t.Parallel()
		got, err := Parse(fstest.MapFS{
			"0002_second.sql":    file("SELECT 2;"),
			"0001_first.sql":     file("SELECT 1;"),
			"0003_third_one.sql": file("SELECT 3;"),
		})
		require.NoError(t, err)
		require.Len(t, got, 3)
		for i, name := range []string{"0001_first.sql", "0002_second.sql", "0003_third_one.sql"} {
			require.Equal(t, i+1, got[i].Version)
			require.Equal(t, name, got[i].Name)
		}
		require.Equal(t, "SELECT 1;", got[0].SQL)
		// sha256sum of "SELECT 1;"
		require.Equal(t, "17db4fd369edb9244b9f91d9aeed145c3d04ad8ba6e95d06247f07a63527d11a", got[0].Checksum)
	})

	refused := map[string]fstest.MapFS{
		"Gap":              {"0001_a.sql": file("x"), "0003_c.sql": file("x")},
		"Duplicate":        {"0001_a.sql": file("x"), "0001_b.sql": file("x")},
		"StartsAtTwo":      {"0002_a.sql": file("x")},
		"VersionZero":      {"0000_a.sql": file("x"), "0001_b.sql": file("x")},
		"ThreeDigits":      {"001_a.sql": file("x")},
		"NoName":           {"0001_.sql": file("x")},
		"UpperCase":        {"0001_Init.sql": file("x")},
		"WrongExtension":   {"0001_a.sql": file("x"), "0002_b.txt": file("x")},
		"StrayFile":        {"0001_a.sql": file("x"), "README.md": file("x")},
		"Directory":        {"0001_a.sql": file("x"), "0002_b.sql/inner": file("x")},
		"Empty":            {"0001_a.sql": file("")},
		"NoFiles":          {},
		"DoubleUnderscore": {"0001_a__b.sql": file("x")},
	}
	for name, fsys := range refused {
		t.Run("Refuses"+name, func(t *testing.T) {
			t.Parallel()
			got, err := Parse(fsys)
			require.Error(t, err)
			require.Nil(t, got)
		})
	}
}

func TestEmbeddedMigrationsParse(t *testing.T) {
	t.Parallel()
	all, err := All()
	require.NoError(t, err)
	names := make([]string, len(all))
	for i, m := range all {
		names[i] = m.Name
	}
	require.Equal(t, []string{"0001_encryption_vaults.sql", "0002_recovery_wrap.sql", "0003_key_check.sql", "0004_kek_index.sql", "0005_data_keys.sql", "0006_recovery_proof.sql", "0007_format1_closure.sql", "0008_data_key_rotation.sql", "0009_audit_upkeep.sql", "0010_audit_seal.sql", "0011_replicas.sql", "0012_data_key_wraps.sql"}, names)
}
