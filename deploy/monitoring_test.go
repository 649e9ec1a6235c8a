package deploy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// The monitoring files: Prometheus rules with their promtool unit tests,
// and the Grafana dashboard.
const (
	rulesFile     = "prometheus/keybroker-rules.yaml"
	ruleTestsFile = "prometheus/keybroker-rules.test.yaml"
	dashboardFile = "grafana/keybroker.json"
)

// promql is Prometheus' own PromQL parser, the one its rule loader and its
// query engine use.
var promql = parser.NewParser(parser.Options{})

// servedFamily is what a scrape says of one metric name: the labels its
// series carry.
type servedFamily map[string]bool

// servedNames reads a /metrics exposition and returns every series name
// it serves with its labels: a histogram serves name_bucket (with le),
// name_sum and name_count, a summary name (with quantile), name_sum and
// name_count.
func servedNames(t *testing.T, exposition string) map[string]servedFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	families, err := p.TextToMetricFamilies(strings.NewReader(exposition))
	require.NoError(t, err)
	served := map[string]servedFamily{}
	add := func(name string, m *dto.Metric, extra ...string) {
		f := served[name]
		if f == nil {
			f = servedFamily{}
			served[name] = f
		}
		for _, l := range m.GetLabel() {
			f[l.GetName()] = true
		}
		for _, e := range extra {
			f[e] = true
		}
	}
	for name, mf := range families {
		for _, m := range mf.GetMetric() {
			switch mf.GetType() {
			case dto.MetricType_HISTOGRAM:
				add(name+"_bucket", m, "le")
				add(name+"_sum", m)
				add(name+"_count", m)
			case dto.MetricType_SUMMARY:
				add(name, m, "quantile")
				add(name+"_sum", m)
				add(name+"_count", m)
			default:
				add(name, m)
			}
		}
	}
	return served
}

// targetLabels are attached by Prometheus (or the Prometheus Operator)
// when it scrapes, not served by keybroker.
var targetLabels = map[string]bool{labels.MetricName: true, "job": true, "instance": true, "namespace": true}

// TestMonitoringMetricsAreServed: every metric name an alert, a recording
// rule or a dashboard panel reads is served by a running keybroker, with
// the labels the queries match on. The server is exercised first (vaults
// made, keys fetched, a re-wrap run recorded, rows counted), so that the
// series that exist only once labelled are there.
func TestMonitoringMetricsAreServed(t *testing.T) {
	t.Parallel()
	// use is one selector: where it is, the name it reads and the labels
	// its matchers name.
	type use struct {
		where, name string
		labels      []string
	}
	var uses []use
	collect := func(where, expr string) {
		for _, vs := range selectors(t, expr) {
			u := use{where: where, name: selectorName(t, vs)}
			for _, m := range vs.LabelMatchers {
				if !targetLabels[m.Name] {
					u.labels = append(u.labels, m.Name)
				}
			}
			uses = append(uses, u)
		}
	}
	// A recorded series has the labels its rule groups by.
	recorded := map[string]servedFamily{}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			where := "alert " + r.Alert
			if r.Record != "" {
				where = "recording rule " + r.Record
				recorded[r.Record] = groupingLabels(t, r.Expr)
			}
			collect(where, r.Expr)
		}
	}
	for where, q := range dashboardQueries(t, loadDashboard(t)) {
		collect(where, q)
	}
	require.NotEmpty(t, uses)

	served := scrapeExercised(t, func(served map[string]servedFamily) bool {
		for _, u := range uses {
			if served[u.name] == nil && recorded[u.name] == nil {
				return false
			}
		}
		return true
	})
	for _, u := range uses {
		family := served[u.name]
		if family == nil {
			family = recorded[u.name]
		}
		require.NotNil(t, family, "%s reads %s, which keybroker does not serve", u.where, u.name)
		for _, l := range u.labels {
			require.True(t, family[l], "%s matches on label %q of %s, which has none", u.where, l, u.name)
		}
	}
}

// groupingLabels returns the labels an aggregation in expr keeps (by),
// which are the labels of the series a recording rule makes of it.
func groupingLabels(t *testing.T, expr string) servedFamily {
	t.Helper()
	node, err := promql.ParseExpr(expr)
	require.NoError(t, err)
	out := servedFamily{}
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		if agg, ok := n.(*parser.AggregateExpr); ok {
			require.False(t, agg.Without, "recording rules aggregate with by(), so their labels are known: %s", expr)
			for _, l := range agg.Grouping {
				out[l] = true
			}
		}
		return nil
	})
	return out
}

// scrapeExercised starts keybroker on PostgreSQL twice on one database —
// the first makes vaults and runs the re-wrap job, the second counts the
// rows at start and serves key fetches — and scrapes the second's
// /metrics until complete says the scrape has what it needs, or a bound
// passes (the row counts and the re-wrap state are refreshed once a
// minute). It returns the last scrape.
func scrapeExercised(t *testing.T, complete func(map[string]servedFamily) bool) map[string]servedFamily {
	t.Helper()
	role, _ := pgtest.NewPlainDatabase(t)
	kekFile := filepath.Join(t.TempDir(), "kek")
	key := make([]byte, 32)
	rand.Read(key)
	require.NoError(t, os.WriteFile(kekFile, []byte(base64.StdEncoding.EncodeToString(key)), 0o400))
	env := []string{"DATABASE_URL=" + role.URL, "KEYBROKER_KEK=file://" + kekFile + "?id=monitoring-test"}

	first := startServer(t, env...)
	fillVaults(t, first)
	first.stop()
	srv := startServer(t, env...)
	keysOf(t, srv)
	// A token the server refuses: signed by a key its JWKS does not have.
	require.Equal(t, http.StatusUnauthorized, vaultCall(t, &server{addr: srv.addr, issuer: first.issuer}, http.MethodGet, "/key", "alice"))

	deadline := time.Now().Add(100 * time.Second)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		served := servedNames(t, scrape(t, "http://"+srv.addr+"/metrics"))
		if complete(served) || time.Now().After(deadline) {
			return served
		}
		<-tick.C
	}
}

// scrape GETs a /metrics endpoint and returns the exposition.
func scrape(t *testing.T, target string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	require.NoError(t, err)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	var body strings.Builder
	_, err = bufio.NewReader(res.Body).WriteTo(&body)
	require.NoError(t, err)
	return body.String()
}

// TestServedNames checks the exposition reading the metric test relies on.
func TestServedNames(t *testing.T) {
	t.Parallel()
	served := servedNames(t, `# TYPE h histogram
h_bucket{kind="fetch",le="0.1"} 1
h_bucket{kind="fetch",le="+Inf"} 1
h_sum{kind="fetch"} 0.05
h_count{kind="fetch"} 1
# TYPE s summary
s{quantile="0.5"} 1
s_sum 1
s_count 1
# TYPE c counter
c_total{route="/x",status="200"} 3
`)
	names := make([]string, 0, len(served))
	for n := range served {
		names = append(names, n)
	}
	slices.Sort(names)
	require.Equal(t, []string{"c_total", "h_bucket", "h_count", "h_sum", "s", "s_count", "s_sum"}, names)
	require.Equal(t, servedFamily{"kind": true, "le": true}, served["h_bucket"])
	require.Equal(t, servedFamily{"kind": true}, served["h_count"])
	require.Equal(t, servedFamily{"quantile": true}, served["s"])
	require.Equal(t, servedFamily{"route": true, "status": true}, served["c_total"])

	require.Equal(t, []string{"a", "b_bucket"}, metricNames(t, `sum(rate(b_bucket{x="1"}[5m])) / on() group_left a or vector(0)`))
	require.Equal(t, []string{"a"}, metricNames(t, `{__name__="a", x="y"}`))
}
