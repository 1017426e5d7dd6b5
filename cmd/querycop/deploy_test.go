package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/internal/pgtest"
)

// The monitoring kit in deploy/: a Grafana dashboard, Prometheus alert
// rules, and the same rules as a PrometheusRule. These tests keep it true
// of the binary: every metric it uses is one a running gateway exports, the
// rules pass promtool's checks and unit tests, and the two rule files hold
// the same groups.

const (
	dashboardFile      = "../../deploy/grafana/querycop.json"
	rulesFile          = "../../deploy/prometheus/querycop-rules.yaml"
	rulesTestFile      = "../../deploy/prometheus/querycop-rules.test.yaml"
	prometheusRuleFile = "../../deploy/kubernetes/prometheusrule.yaml"
)

// metricName finds the metric names in a PromQL expression: Querycop's own
// and the Go client's runtime and process collectors. Label names and
// values never start with these prefixes here.
var metricName = regexp.MustCompile(`\b(?:querycop|go|process)_[a-zA-Z0-9_]+\b`)

type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource *struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s is not valid JSON: %v", dashboardFile, err)
	}
	return d
}

// dashboardExprs are the PromQL expressions of the dashboard's panels and
// variables.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	d := readDashboard(t)
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		if q, ok := v.Query.(map[string]any); ok {
			s, _ := q["query"].(string)
			exprs = append(exprs, s)
		}
	}
	return exprs
}

// ruleExprs are the expressions of a rules file (each on one `expr:` line).
func ruleExprs(t *testing.T, file string) []string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, m := range regexp.MustCompile(`(?m)^\s*expr:\s*(.+)$`).FindAllStringSubmatch(string(data), -1) {
		exprs = append(exprs, m[1])
	}
	return exprs
}

func TestDashboardShape(t *testing.T) {
	d := readDashboard(t)
	if d.UID != "querycop" || d.Title == "" {
		t.Errorf("dashboard uid %q title %q, want uid querycop and a title", d.UID, d.Title)
	}
	hasDS := false
	for _, v := range d.Templating.List {
		hasDS = hasDS || (v.Name == "datasource" && v.Type == "datasource")
	}
	if !hasDS {
		t.Error("the dashboard has no datasource variable, so it cannot be imported into any Grafana as is")
	}
	graphs := 0
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		graphs++
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the ${datasource} variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
	}
	// The list: clients, connections by state, acquire wait,
	// refusals, transactions/queries, prepared statements, token expiry and
	// failures, retirements, runtime.
	exprs := strings.Join(dashboardExprs(t), "\n")
	for _, want := range []string{
		"querycop_clients_connected", "querycop_pool_clients_waiting", "querycop_pool_connections",
		"querycop_pool_acquire_wait_seconds_bucket", "querycop_clients_refused_total",
		"querycop_transactions_total", "querycop_queries_total", "querycop_prepared_statements_total",
		"querycop_token_expiry_seconds", "querycop_token_mint_failures_total",
		"querycop_pool_connections_closed_total", "go_goroutines", "process_resident_memory_bytes",
		"querycop_tx_pinned_clients", "querycop_tx_pins_total",
	} {
		if !strings.Contains(exprs, want) {
			t.Errorf("no dashboard panel uses %s", want)
		}
	}
	if graphs < 10 {
		t.Errorf("only %d panels", graphs)
	}
}

// The PrometheusRule manifest carries exactly the groups of the plain
// rules file, indented under spec.
func TestPrometheusRuleMatchesRulesFile(t *testing.T) {
	plain, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := os.ReadFile(prometheusRuleFile)
	if err != nil {
		t.Fatal(err)
	}
	groups := func(b []byte) string {
		s := string(b)
		i := strings.Index(s, "groups:")
		if i < 0 {
			t.Fatal("no groups: in a rules file")
		}
		return s[i:]
	}
	want := groups(plain)
	var got strings.Builder
	for _, line := range strings.SplitAfter(groups(manifest), "\n") {
		got.WriteString(strings.TrimPrefix(line, "  "))
	}
	if got.String() != want {
		t.Errorf("%s's groups differ from %s; copy them (indented two spaces under spec:)", prometheusRuleFile, rulesFile)
	}
	for _, want := range []string{"apiVersion: monitoring.coreos.com/v1", "kind: PrometheusRule", "\nspec:\n  groups:\n"} {
		if !strings.Contains(string(manifest), want) {
			t.Errorf("%s lacks %q", prometheusRuleFile, want)
		}
	}
}

// promtool finds Debian's promtool (package prometheus, which .ci/run
// installs); outside CI a missing promtool skips.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("promtool is not installed (apt-get install prometheus): %v", err)
		}
		t.Skip("promtool is not installed (apt-get install prometheus)")
	}
	return p
}

func runPromtool(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestRulesPassPromtool(t *testing.T) {
	promtool(t)
	runPromtool(t, ".", "check", "rules", rulesFile)
	// The alert tests (token and saturation) run from their own folder,
	// where their rule_files path resolves.
	runPromtool(t, filepath.Dir(rulesTestFile), "test", "rules", filepath.Base(rulesTestFile))

	// The PrometheusRule's spec, as a plain rules file.
	manifest, err := os.ReadFile(prometheusRuleFile)
	if err != nil {
		t.Fatal(err)
	}
	_, spec, ok := strings.Cut(string(manifest), "\nspec:\n")
	if !ok {
		t.Fatalf("%s has no spec", prometheusRuleFile)
	}
	dir := t.TempDir()
	var dedented strings.Builder
	for _, line := range strings.SplitAfter(spec, "\n") {
		dedented.WriteString(strings.TrimPrefix(line, "  "))
	}
	writeFile(t, filepath.Join(dir, "spec.yaml"), dedented.String())
	runPromtool(t, dir, "check", "rules", "spec.yaml")

	// The dashboard's queries must parse: each becomes a recording rule,
	// with Grafana's variables given typical values.
	grafanaVars := strings.NewReplacer("$__rate_interval", "1m", "$instance", ".*", "$database", ".*", "$user", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range dashboardExprs(t) {
		q, err := json.Marshal(grafanaVars.Replace(e))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(e, "label_values(") {
			// Grafana's own function: check the selector inside it.
			inner := strings.TrimSuffix(strings.TrimPrefix(grafanaVars.Replace(e), "label_values("), ")")
			sel, _, _ := strings.Cut(inner, ", ")
			if i := strings.LastIndex(inner, ", "); i >= 0 {
				sel = inner[:i]
			}
			q, _ = json.Marshal(sel)
		}
		rules.WriteString("      - record: dashboard:query_" + strconv.Itoa(i) + "\n        expr: " + string(q) + "\n")
	}
	writeFile(t, filepath.Join(dir, "dashboard.yaml"), rules.String())
	runPromtool(t, dir, "check", "rules", "dashboard.yaml")
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestDeployMetricsAreExported scrapes a running gateway, in token mode
// with a client served, and checks that every metric the dashboard and the
// rules use is one it exports.
func TestDeployMetricsAreExported(t *testing.T) {
	c := pgtest.Require(t)
	tokenCmd, err := filepath.Abs("../../testdata/tokencmd/print-password.sh")
	if err != nil {
		t.Fatal(err)
	}
	p := startQuerycop(t, c,
		"GATEKEEPER_BACKEND_HOST=localhost",
		"GATEKEEPER_BACKEND_TLS_MODE=verify-full",
		"GATEKEEPER_BACKEND_TLS_CA_FILE="+c.CA.CertFile,
		"GATEKEEPER_BACKEND_TOKEN_CMD="+tokenCmd,
		"PATH="+os.Getenv("PATH"), // the token command runs through sh
	)
	conn := p.mustConnect(t)
	if got := mustExec(t, conn, "select 7 * 6"); got != "42" {
		t.Fatalf("select 7 * 6 through querycop = %q", got)
	}
	conn.Close(context.Background())
	// Series labelled by reason appear with their first event: a refusal
	// (the token command knows no password for this role) and a retirement
	// (a drain closes the idle connection).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if bad, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=u_nobody password=x dbname=%s sslmode=disable", p.port, pgtest.Database)); err == nil {
		bad.Close(ctx)
		t.Fatal("a role the token command knows nothing of was let in")
	}
	req, err := http.NewRequest("POST", p.api+"/v1/drain", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+lifecycleKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST /v1/drain: %v", err)
	}
	resp.Body.Close()

	exported := map[string]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, body := p.get(t, "/metrics")
		if status != http.StatusOK {
			t.Fatalf("/metrics answered %d", status)
		}
		exported = exposedNames(body)
		if exported["querycop_pool_connections_closed_total"] && exported["querycop_clients_refused_total"] || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	used := map[string][]string{}
	for _, src := range []struct {
		file  string
		exprs []string
	}{
		{dashboardFile, dashboardExprs(t)},
		{rulesFile, ruleExprs(t, rulesFile)},
		{prometheusRuleFile, ruleExprs(t, prometheusRuleFile)},
	} {
		if len(src.exprs) < 5 {
			t.Fatalf("found only %d expressions in %s", len(src.exprs), src.file)
		}
		for _, e := range src.exprs {
			for _, name := range metricName.FindAllString(e, -1) {
				used[name] = append(used[name], filepath.Base(src.file))
			}
		}
	}
	var missing []string
	for name, files := range used {
		if !exported[name] {
			missing = append(missing, name+" (used in "+strings.Join(dedupe(files), ", ")+")")
		}
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("not exported by querycop: %s", m)
	}
	if len(used) < 20 {
		t.Errorf("only %d metric names found in deploy/: %v", len(used), used)
	}
	// Querycop's own metrics the dashboard does not show, for whoever adds
	// one: not an error, a reminder.
	var unshown []string
	for name := range exported {
		if strings.HasPrefix(name, "querycop_") && used[name] == nil {
			unshown = append(unshown, name)
		}
	}
	sort.Strings(unshown)
	t.Logf("exported but used by no panel or rule: %v", unshown)
}

// exposedNames are the sample names of a Prometheus text exposition
// (histograms as _bucket, _sum and _count).
func exposedNames(body []byte) map[string]bool {
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names
}

func dedupe(s []string) []string {
	sort.Strings(s)
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}
