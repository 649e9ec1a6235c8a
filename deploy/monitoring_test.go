package deploy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

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

// The rule file's format, as Prometheus reads it (model/rulefmt, which is
// not imported: it brings the whole query engine, and promtool checks the
// file with it below).
type (
	ruleGroups struct {
		Groups []ruleGroup `yaml:"groups"`
	}
	ruleGroup struct {
		Name     string         `yaml:"name"`
		Interval model.Duration `yaml:"interval,omitempty"`
		Rules    []rule         `yaml:"rules"`
	}
	rule struct {
		Record      string            `yaml:"record,omitempty"`
		Alert       string            `yaml:"alert,omitempty"`
		Expr        string            `yaml:"expr"`
		For         model.Duration    `yaml:"for,omitempty"`
		Labels      map[string]string `yaml:"labels,omitempty"`
		Annotations map[string]string `yaml:"annotations,omitempty"`
	}
)

// loadRules reads the rule file strictly (an unknown or misspelt key is an
// error, as in Prometheus) and parses every expression.
func loadRules(t *testing.T) ruleGroups {
	t.Helper()
	raw, err := os.ReadFile(rulesFile)
	require.NoError(t, err)
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	var groups ruleGroups
	require.NoError(t, dec.Decode(&groups), rulesFile)
	require.NotEmpty(t, groups.Groups)
	for _, g := range groups.Groups {
		require.NotEmpty(t, g.Rules, "group %s", g.Name)
		for _, r := range g.Rules {
			require.True(t, (r.Record == "") != (r.Alert == ""), "group %s: a rule is a record or an alert: %+v", g.Name, r)
			if r.Record != "" {
				require.True(t, model.LegacyValidation.IsValidMetricName(r.Record), "record %q", r.Record)
			}
			_, err := promql.ParseExpr(r.Expr)
			require.NoError(t, err, "%s%s: %s", r.Record, r.Alert, r.Expr)
		}
	}
	return groups
}

// TestPrometheusRules: the rules load, and every alert is one an on-call
// person can act on: it waits (for:) before firing, has a severity, says
// what is wrong and points at its runbook section in deploy/README.md.
func TestPrometheusRules(t *testing.T) {
	t.Parallel()
	groups := loadRules(t)
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	anchors := markdownAnchors(string(readme))

	alerts, records := map[string]bool{}, map[string]bool{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				require.False(t, records[r.Record], "recorded twice: %s", r.Record)
				records[r.Record] = true
				// level:metric:operations, the naming Prometheus recommends.
				require.Len(t, strings.Split(r.Record, ":"), 3, "recording rule name %s", r.Record)
				continue
			}
			name := r.Alert
			require.False(t, alerts[name], "alert defined twice: %s", name)
			alerts[name] = true
			require.True(t, strings.HasPrefix(name, "Keybroker"), name)
			require.GreaterOrEqual(t, time.Duration(r.For), time.Minute, "%s: fires on a single evaluation", name)
			require.Contains(t, []string{"critical", "warning"}, r.Labels["severity"], "%s: severity", name)
			for _, a := range []string{"summary", "description", "runbook"} {
				require.NotEmpty(t, r.Annotations[a], "%s: annotation %s", name, a)
			}
			require.Equal(t, "deploy/README.md#"+strings.ToLower(name), r.Annotations["runbook"], name)
			require.True(t, anchors[strings.ToLower(name)], "%s: deploy/README.md has no section %q", name, name)
		}
	}
	// The conditions the operators asked to be paged for.
	for _, want := range []string{
		"KeybrokerKEKUnavailable", "KeybrokerKEKDenied", "KeybrokerKEKNotReady",
		"KeybrokerNotReady", "KeybrokerNoReadyReplica", "KeybrokerRewrapStalled", "KeybrokerRewrapFailing",
		"KeybrokerVault5xx", "KeybrokerVault503", "KeybrokerCommitLatencyHigh", "KeybrokerJWKSUnavailable",
	} {
		require.True(t, alerts[want], "no alert %s", want)
	}
}

// markdownAnchors returns the anchors GitHub gives the headings of a
// Markdown document (outside its fenced code blocks).
func markdownAnchors(doc string) map[string]bool {
	anchors := map[string]bool{}
	drop := regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	fenced := false
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
		}
		if fenced || !strings.HasPrefix(line, "#") {
			continue
		}
		heading := strings.TrimSpace(strings.TrimLeft(line, "#"))
		anchors[strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(heading), ""), " ", "-")] = true
	}
	return anchors
}

// promtool returns the path of Prometheus' promtool. CI installs it
// (.ci/run); there, its absence fails the test instead of skipping it.
func promtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" {
		t.Fatal("promtool is not installed, so the alert rules cannot be tested: .ci/run installs Debian's prometheus package, which ships it")
	}
	t.Skip("SKIPPED LOUDLY: promtool is not installed (apt-get install --no-install-recommends prometheus); the alert rules were not unit-tested")
	return ""
}

// TestPrometheusRulesPromtool runs Prometheus' own rule tooling on the
// rules: `promtool check rules` with every lint, and `promtool test rules`,
// which evaluates them on the synthetic series of the unit test file.
func TestPrometheusRulesPromtool(t *testing.T) {
	t.Parallel()
	tool := promtool(t)
	for _, args := range [][]string{
		{"check", "rules", "--lint=all", "--lint-fatal", filepath.Base(rulesFile)},
		{"test", "rules", filepath.Base(ruleTestsFile)},
	} {
		cmd := exec.Command(tool, args...)
		cmd.Dir = filepath.Dir(rulesFile)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "promtool %s:\n%s", strings.Join(args, " "), out)
		require.Contains(t, string(out), "SUCCESS", "promtool %s:\n%s", strings.Join(args, " "), out)
	}
}

// ruleTests is the part of a promtool unit test file this package reads.
type ruleTests struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		Name          string `yaml:"name"`
		AlertRuleTest []struct {
			EvalTime  string           `yaml:"eval_time"`
			Alertname string           `yaml:"alertname"`
			ExpAlerts []map[string]any `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
		PromQLExprTest []struct {
			Expr string `yaml:"expr"`
		} `yaml:"promql_expr_test"`
	} `yaml:"tests"`
}

// TestPrometheusRuleTestsCoverEveryRule: the unit tests have, for every
// alert, a case where it fires and one where it stays quiet, and evaluate
// every recording rule.
func TestPrometheusRuleTestsCoverEveryRule(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(ruleTestsFile)
	require.NoError(t, err)
	var tests ruleTests
	require.NoError(t, yaml.Unmarshal(raw, &tests))
	require.Equal(t, []string{filepath.Base(rulesFile)}, tests.RuleFiles)

	fires, quiet, evaluated := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, at := range tc.AlertRuleTest {
			if len(at.ExpAlerts) > 0 {
				fires[at.Alertname] = true
			} else {
				quiet[at.Alertname] = true
			}
		}
		for _, et := range tc.PromQLExprTest {
			for _, name := range metricNames(t, et.Expr) {
				evaluated[name] = true
			}
		}
	}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				require.True(t, evaluated[r.Record], "no promql_expr_test evaluates %s", r.Record)
				continue
			}
			require.True(t, fires[r.Alert], "no test in %s where %s fires", ruleTestsFile, r.Alert)
			require.True(t, quiet[r.Alert], "no test in %s where %s stays quiet", ruleTestsFile, r.Alert)
		}
	}
}

// selectors returns the vector selectors of a PromQL expression, parsed
// with Prometheus' parser.
func selectors(t *testing.T, expr string) []*parser.VectorSelector {
	t.Helper()
	node, err := promql.ParseExpr(expr)
	require.NoError(t, err, "PromQL: %s", expr)
	var out []*parser.VectorSelector
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			out = append(out, vs)
		}
		return nil
	})
	return out
}

// selectorName is the metric name a selector reads. A selector that
// matches names by pattern (or none) is refused: its names could not be
// checked.
func selectorName(t *testing.T, vs *parser.VectorSelector) string {
	t.Helper()
	if vs.Name != "" {
		return vs.Name
	}
	for _, m := range vs.LabelMatchers {
		if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
			return m.Value
		}
	}
	t.Fatalf("selector %s does not name its metric", vs)
	return ""
}

// metricNames returns the metric names an expression reads, sorted.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	seen := map[string]bool{}
	for _, vs := range selectors(t, expr) {
		seen[selectorName(t, vs)] = true
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// The parts of a Grafana dashboard the tests read.
type (
	grafanaDatasource struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	}
	grafanaTarget struct {
		Expr       string             `json:"expr"`
		RefID      string             `json:"refId"`
		Datasource *grafanaDatasource `json:"datasource"`
	}
	grafanaPanel struct {
		ID      int    `json:"id"`
		Type    string `json:"type"`
		Title   string `json:"title"`
		GridPos struct {
			H, W, X, Y int
		} `json:"gridPos"`
		Datasource *grafanaDatasource `json:"datasource"`
		Targets    []grafanaTarget    `json:"targets"`
		Panels     []grafanaPanel     `json:"panels"` // of a collapsed row
	}
	grafanaVariable struct {
		Type       string             `json:"type"`
		Name       string             `json:"name"`
		Query      any                `json:"query"`
		Definition string             `json:"definition"`
		Datasource *grafanaDatasource `json:"datasource"`
	}
	grafanaDashboard struct {
		UID           string         `json:"uid"`
		Title         string         `json:"title"`
		SchemaVersion int            `json:"schemaVersion"`
		Panels        []grafanaPanel `json:"panels"`
		Templating    struct {
			List []grafanaVariable `json:"list"`
		} `json:"templating"`
	}
)

func loadDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	raw, err := os.ReadFile(dashboardFile)
	require.NoError(t, err)
	var d grafanaDashboard
	require.NoError(t, json.Unmarshal(raw, &d), dashboardFile)
	return d
}

// panels returns the dashboard's panels, those of collapsed rows included,
// rows excluded.
func (d grafanaDashboard) panels() []grafanaPanel {
	var out []grafanaPanel
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			if p.Type != "row" {
				out = append(out, p)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// grafanaInterval stands in for Grafana's interval variables, which are
// substituted before Prometheus sees a query; other variables ($job) are
// only used inside label matchers' strings.
var grafanaInterval = strings.NewReplacer("$__rate_interval", "5m", "${__rate_interval}", "5m",
	"$__interval", "1m", "${__interval}", "1m", "$__range", "3h", "${__range}", "3h")

// dashboardQueries returns every PromQL query of the dashboard, as
// Prometheus receives it, with where it is: the panels' targets and the
// template variables' label_values() selectors.
func dashboardQueries(t *testing.T, d grafanaDashboard) map[string]string {
	t.Helper()
	queries := map[string]string{}
	for _, p := range d.panels() {
		for _, tg := range p.Targets {
			queries[fmt.Sprintf("panel %q target %s", p.Title, tg.RefID)] = grafanaInterval.Replace(tg.Expr)
		}
	}
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*[a-zA-Z_][a-zA-Z0-9_]*\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		require.NotNil(t, m, "variable %s: want label_values(selector, label), got %q", v.Name, v.Definition)
		queries["variable "+v.Name] = m[1]
	}
	return queries
}

// TestGrafanaDashboard: the dashboard imports into any Grafana with any
// Prometheus data source (chosen by a variable, never a fixed uid), its
// panels do not overlap, every query parses as PromQL, and it shows what
// an operator of keybroker looks at.
func TestGrafanaDashboard(t *testing.T) {
	t.Parallel()
	d := loadDashboard(t)
	require.Equal(t, "keybroker", d.UID)
	require.NotEmpty(t, d.Title)
	require.GreaterOrEqual(t, d.SchemaVersion, 39, "schemaVersion: a dashboard of a current Grafana")

	var dsVar bool
	for _, v := range d.Templating.List {
		if v.Type == "datasource" {
			require.Equal(t, "datasource", v.Name)
			require.Equal(t, "prometheus", v.Query)
			dsVar = true
			continue
		}
		require.Equal(t, &grafanaDatasource{"prometheus", "${datasource}"}, v.Datasource, "variable %s", v.Name)
	}
	require.True(t, dsVar, "no data source variable")

	ids := map[int]bool{}
	type rect struct{ x0, y0, x1, y1 int }
	var placed []rect
	var all []grafanaPanel
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			all = append(all, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, p := range all {
		require.False(t, ids[p.ID], "panel id %d used twice", p.ID)
		ids[p.ID] = true
		g := p.GridPos
		require.True(t, g.W > 0 && g.H > 0 && g.X >= 0 && g.X+g.W <= 24 && g.Y >= 0, "panel %q: gridPos %+v", p.Title, g)
		r := rect{g.X, g.Y, g.X + g.W, g.Y + g.H}
		for _, o := range placed {
			require.False(t, r.x0 < o.x1 && o.x0 < r.x1 && r.y0 < o.y1 && o.y0 < r.y1, "panel %q overlaps another", p.Title)
		}
		placed = append(placed, r)
		if p.Type == "row" {
			continue
		}
		require.Equal(t, &grafanaDatasource{"prometheus", "${datasource}"}, p.Datasource, "panel %q", p.Title)
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			require.Equal(t, &grafanaDatasource{"prometheus", "${datasource}"}, tg.Datasource, "panel %q", p.Title)
			require.NotEmpty(t, tg.Expr, "panel %q", p.Title)
			require.False(t, refs[tg.RefID], "panel %q: refId %s twice", p.Title, tg.RefID)
			refs[tg.RefID] = true
		}
	}

	shown := map[string]bool{}
	for _, q := range dashboardQueries(t, d) {
		for _, vs := range selectors(t, q) {
			shown[selectorName(t, vs)] = true
		}
	}
	// Request rate, latency and status; KEK calls; readiness; rows by KEK
	// id and format; re-wrap progress; group commit size, latency and
	// retries; the pool; the Go runtime.
	for _, want := range []string{
		"keybroker_http_requests_total", "keybroker_http_request_duration_seconds_bucket",
		"keybroker_kek_operations_total", "keybroker_kek_operation_duration_seconds_bucket",
		"keybroker_ready_check", "keybroker_vault_rows", "keybroker_rewrap_rows", "keybroker_rewrap_running",
		"keybroker_group_commit_size_bucket", "keybroker_group_commit_duration_seconds_bucket",
		"keybroker_group_commit_retries_total", "keybroker_store_pool_connections",
		"keybroker_store_pool_empty_acquires_total", "go_goroutines", "go_memstats_heap_inuse_bytes",
		"process_cpu_seconds_total",
	} {
		require.True(t, shown[want], "no panel shows %s", want)
	}
}

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
