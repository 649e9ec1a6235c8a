package pgstore

import (
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/keybroker/keybroker/broker"
)

// batchArgs are a FetchBatch's per-batch parameters as boxed array
// literals: $6 (openable KEK ids) and $7–$9 (the outcomes' actions,
// contexts and statuses).
type batchArgs struct {
	openable []string
	outcomes [len(broker.FetchBatch{}.Outcomes)]broker.FetchOutcome
	args     [4]any
}

// fetchArgs caches the last batch's literals: the openable KEKs and the
// outcomes change only with the configuration, so a batch (a lone fetch
// too) reuses them instead of rendering and boxing four strings.
type fetchArgs struct{ last atomic.Pointer[batchArgs] }

func (c *fetchArgs) get(b *broker.FetchBatch) [4]any {
	if a := c.last.Load(); a != nil && a.outcomes == b.Outcomes && slices.Equal(a.openable, b.Openable) {
		return a.args
	}
	var actions, contexts [len(b.Outcomes)]string
	var statuses [len(b.Outcomes)]int32
	for i, o := range b.Outcomes {
		actions[i], contexts[i], statuses[i] = string(o.Action), o.Context, int32(o.Status)
	}
	a := &batchArgs{openable: slices.Clone(b.Openable), outcomes: b.Outcomes,
		args: [4]any{textArray(b.Openable), textArray(actions[:]), textArray(contexts[:]), int4Array(statuses[:])}}
	c.last.Store(a)
	return a.args
}

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
