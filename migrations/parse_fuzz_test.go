package migrations

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/require"
)

// FuzzParse feeds Parse directory listings built from fuzzed text: names
// separated by "\n", each with the body at the same index in bodies
// (separated by "\x00"). Parse must never panic, and whatever it accepts
// must be exactly what its contract promises: versions from 1, increasing
// (gaps allowed), every name NNNN_name.sql whose number is its version, no
// empty body, and the SHA-256 of the body as checksum.
func FuzzParse(f *testing.F) {
	f.Add("0001_init.sql", "CREATE TABLE t ();")
	f.Add("0001_a.sql\n0002_b.sql", "SELECT 1;\x00SELECT 2;")
	f.Add("0002_b.sql\n0001_a.sql\n0003_c_d.sql", "b\x00a\x00c")
	f.Add("0001_a.sql\n0003_c.sql", "x\x00x")
	f.Add("0001_a.sql\n0001_b.sql", "x\x00x")
	f.Add("0000_a.sql", "x")
	f.Add("001_a.sql", "x")
	f.Add("0001_.sql", "x")
	f.Add("0001_A.sql", "x")
	f.Add("0001_a__b.sql", "x")
	f.Add("0001_a.sql\nREADME.md", "x\x00y")
	f.Add("0001_a.sql\n0002_b.sql/inner", "x\x00y")
	f.Add("0001_a.sql", "")
	f.Add("", "")
	f.Add("9999_z.sql", "x")
	f.Add("０００１_a.sql", "x") // full-width digits are not [0-9]
	f.Fuzz(func(t *testing.T, names, bodies string) {
		fsys := fstest.MapFS{}
		bodyList := strings.Split(bodies, "\x00")
		for i, name := range strings.Split(names, "\n") {
			if name == "" || !validFSName(name) {
				continue
			}
			body := ""
			if i < len(bodyList) {
				body = bodyList[i]
			}
			fsys[name] = &fstest.MapFile{Data: []byte(body)}
		}
		got, err := Parse(fsys)
		if err != nil {
			require.Nil(t, got)
			require.True(t, strings.HasPrefix(err.Error(), "migrations: "), "error without the package prefix: %v", err)
			return
		}
		require.NotEmpty(t, got)
		require.Equal(t, 1, got[0].Version)
		for i, m := range got {
			if i > 0 {
				require.Greater(t, m.Version, got[i-1].Version)
			}
			require.Regexp(t, `^[0-9]{4}_[a-z0-9]+(_[a-z0-9]+)*\.sql$`, m.Name)
			require.True(t, strings.HasPrefix(m.Name, fmt.Sprintf("%04d_", m.Version)))
			require.NotEmpty(t, m.SQL)
			sum := sha256.Sum256([]byte(m.SQL))
			require.Equal(t, hex.EncodeToString(sum[:]), m.Checksum)
			require.Equal(t, m.SQL, string(fsys[m.Name].Data))
		}
		require.Len(t, got, countEntries(fsys), "every entry of the directory is a migration")
	})
}

// validFSName keeps the names an fs.FS can hold: MapFS refuses "." and
// "..", empty elements and leading or trailing slashes.
func validFSName(name string) bool {
	for _, elem := range strings.Split(name, "/") {
		if elem == "" || elem == "." || elem == ".." {
			return false
		}
	}
	return true
}

// countEntries is the number of entries at the root of fsys (a name with a
// slash makes a directory there).
func countEntries(fsys fstest.MapFS) int {
	root := map[string]bool{}
	for name := range fsys {
		first, _, _ := strings.Cut(name, "/")
		root[first] = true
	}
	return len(root)
}
