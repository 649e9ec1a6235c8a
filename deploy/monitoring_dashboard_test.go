package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

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
