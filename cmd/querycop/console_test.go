package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
)

// The admin console end to end: the real binary in front of the test
// cluster, queried with psql and with the exact statements
// prometheus-community/pgbouncer_exporter and Datadog's PgBouncer check
// send (both use the simple query protocol: lib/pq without arguments,
// psycopg2).

// consoleResult is one statement's answer, as the tools read it.
type consoleResult struct {
	cols  []string
	types []uint32
	rows  [][]string
}

func (r consoleResult) col(name string) int {
	for i, c := range r.cols {
		if c == name {
			return i
		}
	}
	return -1
}

// consoleQuery runs sql with the simple protocol and returns its one result.
func consoleQuery(t *testing.T, conn *pgconn.PgConn, sql string) consoleResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("%q: %v", sql, err)
	}
	if len(results) != 1 {
		t.Fatalf("%q: %d results, want 1", sql, len(results))
	}
	var r consoleResult
	for _, f := range results[0].FieldDescriptions {
		r.cols = append(r.cols, f.Name)
		r.types = append(r.types, f.DataTypeOID)
	}
	for _, row := range results[0].Rows {
		var cells []string
		for _, v := range row {
			cells = append(cells, string(v))
		}
		r.rows = append(r.rows, cells)
	}
	return r
}

func consoleConnect(ctx context.Context, p *process, user, password, db string) (*pgconn.PgConn, error) {
	return pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable connect_timeout=5",
		p.port, user, password, db))
}

func mustConsole(t *testing.T, p *process, user, password string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := consoleConnect(ctx, p, user, password, "pgbouncer")
	if err != nil {
		t.Fatalf("connecting to the admin console as %s: %v", user, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// requireColumns checks that the named columns exist and, for those the
// tools turn into numbers, that every row's value parses as one.
func requireColumns(t *testing.T, stmt string, r consoleResult, labels, numbers []string) {
	t.Helper()
	for _, c := range labels {
		if r.col(c) < 0 {
			t.Errorf("%q: no column %s (has %v)", stmt, c, r.cols)
		}
	}
	for _, c := range numbers {
		i := r.col(c)
		if i < 0 {
			t.Errorf("%q: no column %s (has %v)", stmt, c, r.cols)
			continue
		}
		for _, row := range r.rows {
			if _, err := strconv.ParseFloat(row[i], 64); err != nil {
				t.Errorf("%q: %s = %q is not a number", stmt, c, row[i])
			}
		}
	}
}

func TestConsolePassThroughMode(t *testing.T) {
	c := pgtest.Require(t)
	p := startQuerycop(t, c, "GATEKEEPER_ADMIN_USERS="+pgtest.UserSCRAM)

	// An application client in session mode, attached to its backend.
	app, err := pgconn.Connect(context.Background(), fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable",
		p.port, pgtest.UserMD5, pgtest.PassMD5, pgtest.Database))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(context.Background())
	if got := mustExec(t, app, "select 1"); got != "1" {
		t.Fatalf("select 1 = %q", got)
	}

	admin := mustConsole(t, p, pgtest.UserSCRAM, pgtest.PassSCRAM)

	// The statements pgbouncer_exporter sends, and the columns it reads.
	exporter := map[string]struct{ labels, numbers []string }{
		"SHOW STATS":    {[]string{"database"}, nil},
		"SHOW VERSION;": {[]string{"version"}, nil},
		"SHOW LISTS;":   {[]string{"list"}, []string{"items"}},
		"SHOW CONFIG;":  {[]string{"key", "value", "default", "changeable"}, nil},
		"SHOW CLIENTS;": {[]string{"database", "user", "state", "application_name"}, nil},
		"SHOW databases;": {[]string{"name", "host", "port", "database", "force_user", "pool_mode"},
			[]string{"pool_size", "reserve_pool_size", "max_connections", "current_connections", "paused", "disabled"}},
		"SHOW stats_totals;": {[]string{"database"}, []string{"query_count", "query_time", "bytes_received", "bytes_sent",
			"wait_time", "xact_count", "xact_time", "client_parse_count", "server_parse_count", "bind_count", "server_assignment_count"}},
		"SHOW pools;": {[]string{"database", "user"}, []string{"cl_active", "cl_active_cancel_req", "cl_waiting", "cl_waiting_cancel_req",
			"sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait"}},
	}
	for stmt, want := range exporter {
		r := consoleQuery(t, admin, stmt)
		requireColumns(t, stmt, r, want.labels, want.numbers)
	}
	if r := consoleQuery(t, admin, "SHOW VERSION;"); len(r.cols) != 1 || len(r.rows) != 1 || !strings.HasPrefix(r.rows[0][0], "Querycop ") {
		t.Errorf("SHOW VERSION: %+v (the exporter wants exactly one column, version)", r)
	}
	if r := consoleQuery(t, admin, "SHOW CONFIG;"); len(r.cols) != 4 {
		t.Errorf("SHOW CONFIG has %d columns; the exporter reads 3 or 4", len(r.cols))
	} else {
		seen := map[string]bool{}
		for _, row := range r.rows {
			seen[row[0]] = true
			if row[0] == "max_client_conn" || row[0] == "max_user_connections" {
				if _, err := strconv.ParseFloat(row[1], 64); err != nil {
					t.Errorf("SHOW CONFIG %s = %q: the exporter parses it as a number", row[0], row[1])
				}
			}
			if strings.Contains(row[1], pgtest.PassSCRAM) || strings.Contains(row[1], lifecycleKey) {
				t.Errorf("SHOW CONFIG shows a secret: %v", row)
			}
		}
		for _, k := range []string{"max_client_conn", "max_user_connections", "default_pool_size", "GATEKEEPER_POOL_SIZE", "ADMIN_API_KEY"} {
			if !seen[k] {
				t.Errorf("SHOW CONFIG has no %s row", k)
			}
		}
	}

	// The statements Datadog's check sends, and the columns it reads.
	datadog := map[string]struct{ labels, numbers []string }{
		"SHOW STATS": {[]string{"database"}, []string{"total_xact_count", "total_query_count", "total_received", "total_sent",
			"total_query_time", "total_xact_time", "total_wait_time", "avg_xact_count", "avg_query_count", "avg_wait_time",
			"avg_recv", "avg_sent", "avg_xact_time", "avg_query_time"}},
		"SHOW POOLS": {[]string{"database", "user"}, []string{"cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used",
			"sv_tested", "sv_login", "maxwait", "maxwait_us"}},
		"SHOW DATABASES": {[]string{"name"}, []string{"pool_size", "max_connections", "current_connections"}},
		"SHOW CONFIG":    {[]string{"key", "value"}, nil},
		"SHOW CLIENTS":   {[]string{"database", "user", "state", "connect_time", "request_time"}, []string{"wait", "wait_us"}},
		"SHOW SERVERS":   {[]string{"database", "user", "state", "connect_time", "request_time"}, nil},
	}
	for stmt, want := range datadog {
		r := consoleQuery(t, admin, stmt)
		requireColumns(t, stmt, r, want.labels, want.numbers)
		// Datadog reads times as "YYYY-MM-DD HH:MM:SS ..." with strptime.
		for _, c := range []string{"connect_time", "request_time"} {
			if i := r.col(c); i >= 0 {
				for _, row := range r.rows {
					if _, err := time.Parse("2006-01-02 15:04:05", strings.Join(strings.Fields(row[i])[:2], " ")); err != nil {
						t.Errorf("%q: %s = %q does not parse as Datadog parses it", stmt, c, row[i])
					}
				}
			}
		}
	}

	// The figures: the application's pool has one client attached to one
	// backend connection.
	pools := consoleQuery(t, admin, "SHOW POOLS")
	var appRow []string
	for _, row := range pools.rows {
		if row[0] == pgtest.Database && row[1] == pgtest.UserMD5 {
			appRow = row
		}
	}
	if appRow == nil {
		t.Fatalf("SHOW POOLS has no row for %s/%s: %v", pgtest.Database, pgtest.UserMD5, pools.rows)
	}
	for col, want := range map[string]string{"cl_active": "1", "cl_waiting": "0", "sv_active": "1", "sv_idle": "0", "pool_mode": "session"} {
		if got := appRow[pools.col(col)]; got != want {
			t.Errorf("SHOW POOLS %s = %s, want %s", col, got, want)
		}
	}
	servers := consoleQuery(t, admin, "SHOW SERVERS")
	appPID := mustExec(t, app, "select pg_backend_pid()")
	found := false
	for _, row := range servers.rows {
		found = found || (row[servers.col("remote_pid")] == appPID && row[servers.col("user")] == pgtest.UserMD5)
	}
	if !found {
		t.Errorf("SHOW SERVERS does not list the application's backend (pid %s): %v", appPID, servers.rows)
	}
	stats := consoleQuery(t, admin, "SHOW STATS")
	for _, row := range stats.rows {
		if row[0] == pgtest.Database {
			if n, _ := strconv.Atoi(row[stats.col("total_received")]); n <= 0 {
				t.Errorf("SHOW STATS total_received for %s = %s, want the bytes the client sent", pgtest.Database, row[stats.col("total_received")])
			}
		}
		if row[0] == "pgbouncer" {
			t.Errorf("SHOW STATS lists the console's own database: %v", row)
		}
	}

	// PAUSE and RESUME are the admin API's pause and resume.
	paused := func() bool {
		_, body := p.get(t, "/v1/pools")
		var v struct{ Paused bool }
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatalf("/v1/pools: %v %s", err, body)
		}
		return v.Paused
	}
	consoleExec(t, admin, "PAUSE")
	if !paused() {
		t.Error("PAUSE on the console did not pause the pools")
	}
	// While paused, a new client's first query waits: SHOW POOLS shows it
	// waiting, and for how long (maxwait, maxwait_us).
	waited := make(chan string, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c2, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable",
			p.port, pgtest.UserMD5, pgtest.PassMD5, pgtest.Database))
		if err != nil {
			waited <- "connect: " + err.Error()
			return
		}
		defer c2.Close(context.Background())
		v, err := testkit.Query(ctx, c2, "select 'served'")
		if err != nil {
			v = err.Error()
		}
		waited <- v
	}()
	var waitUS int
	deadline := time.Now().Add(10 * time.Second)
	for waitUS == 0 && time.Now().Before(deadline) {
		r := consoleQuery(t, admin, "SHOW POOLS")
		for _, row := range r.rows {
			if row[0] == pgtest.Database && row[1] == pgtest.UserMD5 && row[r.col("cl_waiting")] == "1" {
				s, _ := strconv.Atoi(row[r.col("maxwait")])
				us, _ := strconv.Atoi(row[r.col("maxwait_us")])
				waitUS = s*1e6 + us
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if waitUS <= 0 {
		t.Error("SHOW POOLS never showed the waiting client with a maxwait")
	}
	consoleExec(t, admin, "RESUME")
	if paused() {
		t.Error("RESUME on the console did not resume the pools")
	}
	select {
	case v := <-waited:
		if v != "served" {
			t.Errorf("the client that waited through the pause got %q", v)
		}
	case <-time.After(15 * time.Second):
		t.Error("the waiting client was not served after RESUME")
	}
	consoleExec(t, admin, "RELOAD")

	// pgx's default, the extended protocol, gets a clear refusal.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = admin.ExecParams(ctx, "SHOW POOLS", nil, nil, nil, nil).Close()
	if testkit.SQLState(err) != "0A000" || !strings.Contains(err.Error(), "simple query protocol") {
		t.Errorf("extended protocol: %v, want 0A000 naming the simple query protocol", err)
	}

	// Refusals: a user not in GATEKEEPER_ADMIN_USERS, before any password;
	// an admin user with a wrong password, refused by PostgreSQL.
	if _, err := consoleConnect(ctx, p, pgtest.UserMD5, pgtest.PassMD5, "pgbouncer"); testkit.SQLState(err) != "28000" ||
		!strings.Contains(err.Error(), "GATEKEEPER_ADMIN_USERS") {
		t.Errorf("non-admin user: %v, want 28000 naming GATEKEEPER_ADMIN_USERS", err)
	}
	if _, err := consoleConnect(ctx, p, pgtest.UserSCRAM, "wrong", "querycop"); testkit.SQLState(err) != "28P01" {
		t.Errorf("wrong password: %v, want 28P01", err)
	}
	// The alias works too.
	alias, err := consoleConnect(ctx, p, pgtest.UserSCRAM, pgtest.PassSCRAM, "querycop")
	if err != nil {
		t.Fatalf("the querycop alias: %v", err)
	}
	alias.Close(ctx)

	// The application was served throughout.
	if got := mustExec(t, app, "select 2"); got != "2" {
		t.Errorf("the application after the console's work: %q", got)
	}

	// psql, as an operator types it.
	psql := psqlPath(t)
	cmd := exec.Command(psql, "-X", "-h", "127.0.0.1", "-p", strconv.Itoa(p.port), "-U", pgtest.UserSCRAM, "pgbouncer", "-c", "show pools")
	cmd.Env = append(os.Environ(), "PGPASSWORD="+pgtest.PassSCRAM, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=5")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql show pools: %v\n%s", err, out)
	}
	t.Logf("psql -c 'show pools':\n%s", out)
	for _, want := range []string{"database", "cl_active", "sv_idle", "maxwait_us", "pool_mode", pgtest.UserMD5} {
		if !strings.Contains(string(out), want) {
			t.Errorf("psql's show pools lacks %q:\n%s", want, out)
		}
	}
}

func consoleExec(t *testing.T, conn *pgconn.PgConn, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// psqlPath finds psql as the test cluster finds PostgreSQL's programs.
func psqlPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("psql"); err == nil {
		return p
	}
	if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/psql"); len(m) > 0 {
		return m[len(m)-1]
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("psql is not installed (scripts/install-deps installs postgresql-client)")
	}
	t.Skip("psql is not installed")
	return ""
}

// In token mode the console needs the client auth file, which checks the
// admin's password; the token is never what an admin logs in with.
func TestConsoleTokenModeWithAuthFile(t *testing.T) {
	c := pgtest.Require(t)
	tokenCmd, err := filepath.Abs("../../testdata/tokencmd/print-password.sh")
	if err != nil {
		t.Fatal(err)
	}
	authFile := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(authFile, []byte(`"ops" "ops-secret"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startQuerycop(t, c,
		"GATEKEEPER_BACKEND_HOST=localhost",
		"GATEKEEPER_BACKEND_TLS_MODE=verify-full",
		"GATEKEEPER_BACKEND_TLS_CA_FILE="+c.CA.CertFile,
		"GATEKEEPER_BACKEND_TOKEN_CMD="+tokenCmd,
		"GATEKEEPER_CLIENT_AUTH_FILE="+authFile,
		"GATEKEEPER_ADMIN_USERS=ops",
		"PATH="+os.Getenv("PATH"),
	)
	admin := mustConsole(t, p, "ops", "ops-secret")
	if r := consoleQuery(t, admin, "SHOW LISTS"); len(r.rows) == 0 {
		t.Error("SHOW LISTS returned nothing")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := consoleConnect(ctx, p, "ops", "wrong", "pgbouncer"); testkit.SQLState(err) != "28P01" {
		t.Errorf("wrong password: %v, want 28P01", err)
	}
}
