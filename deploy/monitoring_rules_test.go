package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

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
