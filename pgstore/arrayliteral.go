package pgstore

import (
	"strconv"
	"strings"
)

// textArray renders s as a PostgreSQL array literal, '{"a","b"}', every
// element quoted (so NULL, commas, braces and spaces are plain text) with
// '"' and '\' escaped. pgx sends a Go string in the text format whatever
// the parameter's type, so a text[] parameter that is the same for every
// statement of a batch is encoded once per batch, not once per statement
// (pgx's binary array encoding was a dozen allocations per fetch).
func textArray(s []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, e := range s {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for j := 0; j < len(e); j++ {
			if e[j] == '"' || e[j] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(e[j])
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// int4Array renders s as a PostgreSQL array literal, '{1,2}'.
func int4Array(s []int32) string {
	b := []byte{'{'}
	for i, n := range s {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(n), 10)
	}
	return string(append(b, '}'))
}
