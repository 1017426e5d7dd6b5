package console

import (
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/pool"
	"github.com/querycop/querycop/wire"
)

// Unit tests over a pipe, with fake pools and clients: the wire format,
// the commands and their errors. The end-to-end tests against the real
// binary, psql, and the statements of pgbouncer_exporter and Datadog's
// check are in cmd/querycop (console_test.go).

type fakePools struct {
	mu     sync.Mutex
	paused bool
	stats  []pool.Stats
}

func (f *fakePools) Stats() []pool.Stats { return f.stats }
func (f *fakePools) Pause()              { f.mu.Lock(); f.paused = true; f.mu.Unlock() }
func (f *fakePools) Resume()             { f.mu.Lock(); f.paused = false; f.mu.Unlock() }
func (f *fakePools) Paused() bool        { f.mu.Lock(); defer f.mu.Unlock(); return f.paused }

type fakeClients struct {
	clients []wire.ClientInfo
	byDB    map[string]wire.Stats
}

func (f *fakeClients) Clients() []wire.ClientInfo             { return f.clients }
func (f *fakeClients) StatsByDatabase() map[string]wire.Stats { return f.byDB }

func newTestConsole(reload func() error) (*Console, *fakePools) {
	pools := &fakePools{stats: []pool.Stats{
		{Database: "app", User: "alice", Size: 20, Total: 3, Idle: 1, InUse: 2, Waiting: 1, Clients: 5, Acquires: 40, AcquireWait: 2 * time.Millisecond},
		{Database: "app", User: "bob", Size: 20, Total: 1, Constructing: 1, Clients: 1, Acquires: 2},
		{Database: "reports", User: "alice", Size: 10, Total: 0, Clients: 0},
	}}
	since := time.Date(2026, 12, 6, 4, 20, 0, 0, time.UTC)
	clients := &fakeClients{
		clients: []wire.ClientInfo{
			{ID: 1, Address: "127.0.0.1:50000", User: "alice", Database: "app", State: "active", ConnectedSince: since, BackendPID: 4242, TLS: true},
			{ID: 2, Address: "[::1]:50001", User: "bob", Database: "app", State: "idle", ConnectedSince: since},
			{ID: 3, Address: "127.0.0.1:50002", State: "login", ConnectedSince: since},
		},
		byDB: map[string]wire.Stats{
			"app":       {BytesFromClients: 1000, BytesToClients: 5000, Transactions: 30, Queries: 45, BackendHeld: 3 * time.Second, PreparedStatementHits: 7, PreparedStatementMisses: 3},
			"pgbouncer": {BytesFromClients: 99},
		},
	}
	c := New(Config{AdminUsers: []string{"ops", " datadog"}}, Deps{
		Pools: pools, Clients: clients, Reload: reload,
		Settings:    []Setting{{Key: "max_client_conn", Value: "1000", Default: "1000"}},
		Version:     "1.2.3",
		PoolMode:    "transaction",
		BackendHost: "db.example.com", BackendPort: 5432, ListenPort: 15432,
		PoolSize: 20, MinPoolSize: 0, ServerLifetime: 50 * time.Minute, MaxClientConn: 1000,
	})
	return c, pools
}

// session runs Serve on one end of a pipe and returns a frontend on the
// other, past the start-up.
type session struct {
	t      *testing.T
	fe     *pgproto3.Frontend
	conn   net.Conn
	done   chan string
	params map[string]string
}

func start(t *testing.T, c *Console) *session {
	t.Helper()
	client, server := net.Pipe()
	s := &session{t: t, fe: pgproto3.NewFrontend(client, client), conn: client, done: make(chan string, 1), params: map[string]string{}}
	go func() { s.done <- c.Serve(server, "ops", zerolog.Nop()) }()
	t.Cleanup(func() {
		client.Close()
		server.Close()
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after the client closed")
		}
	})
	_ = client.SetDeadline(time.Now().Add(10 * time.Second))
	if _, ok := s.receive().(*pgproto3.AuthenticationOk); !ok {
		t.Fatal("the console did not start with AuthenticationOk")
	}
	for {
		switch m := s.receive().(type) {
		case *pgproto3.ParameterStatus:
			s.params[m.Name] = m.Value
		case *pgproto3.ReadyForQuery:
			return s
		default:
			t.Fatalf("start-up: unexpected %T", m)
		}
	}
}

func (s *session) receive() pgproto3.BackendMessage {
	s.t.Helper()
	m, err := s.fe.Receive()
	if err != nil {
		s.t.Fatalf("receive: %v", err)
	}
	return m
}

// result is one query's answer.
type result struct {
	cols    []pgproto3.FieldDescription
	rows    [][]string // NULL as "<NULL>"
	tag     string
	err     *pgproto3.ErrorResponse
	notices []*pgproto3.NoticeResponse
	empty   bool
}

func (r result) col(name string) int {
	for i, c := range r.cols {
		if string(c.Name) == name {
			return i
		}
	}
	return -1
}

func (s *session) query(q string) result {
	s.t.Helper()
	s.fe.Send(&pgproto3.Query{String: q})
	if err := s.fe.Flush(); err != nil {
		s.t.Fatalf("send %q: %v", q, err)
	}
	var r result
	for {
		switch m := s.receive().(type) {
		case *pgproto3.RowDescription:
			for _, f := range m.Fields {
				f.Name = append([]byte(nil), f.Name...)
				r.cols = append(r.cols, f)
			}
		case *pgproto3.DataRow:
			row := make([]string, len(m.Values))
			for i, v := range m.Values {
				if v == nil {
					row[i] = "<NULL>"
				} else {
					row[i] = string(v)
				}
			}
			r.rows = append(r.rows, row)
		case *pgproto3.CommandComplete:
			r.tag = string(m.CommandTag)
		case *pgproto3.EmptyQueryResponse:
			r.empty = true
		case *pgproto3.ErrorResponse:
			e := *m
			r.err = &e
		case *pgproto3.NoticeResponse:
			n := *m
			r.notices = append(r.notices, &n)
		case *pgproto3.ReadyForQuery:
			if m.TxStatus != 'I' {
				s.t.Errorf("%q: ReadyForQuery status %c, want I", q, m.TxStatus)
			}
			return r
		default:
			s.t.Fatalf("%q: unexpected %T", q, m)
		}
	}
}

func TestConsoleStartup(t *testing.T) {
	c, _ := newTestConsole(nil)
	s := start(t, c)
	if s.params["server_version"] != "1.25.2/querycop" || s.params["client_encoding"] != "UTF8" {
		t.Errorf("start-up parameters %v", s.params)
	}
	if !c.IsConsole("pgbouncer") || !c.IsConsole("querycop") || c.IsConsole("app") || c.IsConsole("PGBOUNCER") {
		t.Error("IsConsole: want pgbouncer and querycop only, case-sensitive as database names are")
	}
	if !c.Allowed("ops") || !c.Allowed("datadog") || c.Allowed("alice") || c.Allowed("") {
		t.Error("Allowed: want ops and datadog (spaces trimmed) only")
	}
}

func TestConsoleShowPools(t *testing.T) {
	c, _ := newTestConsole(nil)
	s := start(t, c)
	r := s.query("show pools;")
	want := []string{"database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
		"sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login",
		"maxwait", "maxwait_us", "pool_mode", "load_balance_hosts"}
	if r.err != nil || r.tag != "SHOW" || len(r.cols) != len(want) {
		t.Fatalf("SHOW POOLS: %+v", r)
	}
	for i, name := range want {
		if string(r.cols[i].Name) != name {
			t.Errorf("column %d is %q, want %q", i, r.cols[i].Name, name)
		}
		oid := uint32(oidInt4)
		if name == "database" || name == "user" || name == "pool_mode" || name == "load_balance_hosts" {
			oid = oidText
		}
		if r.cols[i].DataTypeOID != oid {
			t.Errorf("column %s has type %d, want %d", name, r.cols[i].DataTypeOID, oid)
		}
	}
	if len(r.rows) != 3 {
		t.Fatalf("rows %v", r.rows)
	}
	got := strings.Join(r.rows[0], "|")
	if got != "app|alice|4|1|0|0|2|0|0|1|0|0|0|0|0|transaction|<NULL>" {
		t.Errorf("alice's pool: %s", got)
	}
	if got := strings.Join(r.rows[1], "|"); got != "app|bob|1|0|0|0|0|0|0|0|0|0|1|0|0|transaction|<NULL>" {
		t.Errorf("bob's pool (one connection logging in): %s", got)
	}
}

func TestConsoleShowStats(t *testing.T) {
	c, _ := newTestConsole(nil)
	s := start(t, c)
	r := s.query("SHOW STATS")
	if r.err != nil || len(r.cols) != 25 {
		t.Fatalf("SHOW STATS: %+v", r)
	}
	for _, col := range r.cols[1:] {
		if col.DataTypeOID != oidNumeric {
			t.Errorf("%s: type %d, want numeric", col.Name, col.DataTypeOID)
		}
	}
	// The console's own database is not a database of the server.
	if len(r.rows) != 2 || r.rows[0][0] != "app" || r.rows[1][0] != "reports" {
		t.Fatalf("rows %v", r.rows)
	}
	app := r.rows[0]
	for name, want := range map[string]string{
		"total_server_assignment_count": "42", "total_xact_count": "30", "total_query_count": "45",
		"total_received": "1000", "total_sent": "5000", "total_xact_time": "3000000", "total_wait_time": "2000",
		"total_client_parse_count": "10", "total_server_parse_count": "3", "avg_xact_count": "0",
	} {
		if got := app[r.col(name)]; got != want {
			t.Errorf("%s = %s, want %s", name, got, want)
		}
	}
	r = s.query("SHOW STATS_TOTALS")
	if r.err != nil || len(r.cols) != 13 || string(r.cols[4].Name) != "bytes_received" {
		t.Errorf("SHOW STATS_TOTALS: %+v", r.cols)
	}
	r = s.query("SHOW STATS_AVERAGES")
	if r.err != nil || len(r.cols) != 13 || string(r.cols[12].Name) != "avg_client_login_count" {
		t.Errorf("SHOW STATS_AVERAGES: %+v", r.cols)
	}
	r = s.query("SHOW TOTALS")
	if r.err != nil || len(r.rows) != 24 || r.rows[0][0] != "total_server_assignment_count" || r.rows[0][1] != "42" {
		t.Errorf("SHOW TOTALS: %v", r.rows)
	}
}

func TestConsoleAverages(t *testing.T) {
	c, _ := newTestConsole(nil)
	t0 := time.Date(2026, 12, 6, 4, 0, 0, 0, time.UTC)
	first := map[string]totals{"app": {assignments: 100, xacts: 100, xactTime: 1000, received: 600}}
	if avg := c.averages(t0, first); len(avg) != 0 {
		t.Errorf("averages before a second sample: %v", avg)
	}
	// Asked again within the period: still the first sample only.
	if avg := c.averages(t0.Add(10*time.Second), first); len(avg) != 0 {
		t.Errorf("averages within the first period: %v", avg)
	}
	second := map[string]totals{"app": {assignments: 160, xacts: 160, xactTime: 7000, received: 1200}}
	avg := c.averages(t0.Add(60*time.Second), second)
	if got := avg["app"]; got.xacts != 1 || got.xactTime != 100 || got.received != 10 || got.assignments != 1 {
		t.Errorf("averages over 60s: %+v, want 1 xact/s, 100us per xact, 10 B/s", got)
	}
	// A pool forgotten and back: its counters restart, no huge numbers.
	third := map[string]totals{"app": {assignments: 5, xacts: 5}}
	if got := c.averages(t0.Add(120*time.Second), third)["app"]; got.xacts != 0 || got.assignments != 0 {
		t.Errorf("averages after counters restarted: %+v", got)
	}
}

func TestConsoleShowClientsAndServers(t *testing.T) {
	c, _ := newTestConsole(nil)
	s := start(t, c)
	r := s.query("SHOW CLIENTS")
	if r.err != nil || len(r.cols) != 21 {
		t.Fatalf("SHOW CLIENTS: %+v", r)
	}
	if len(r.rows) != 2 {
		t.Fatalf("clients %v, want the two past start-up", r.rows)
	}
	alice := r.rows[0]
	for name, want := range map[string]string{
		"type": "C", "user": "alice", "database": "app", "state": "active", "addr": "127.0.0.1", "port": "50000",
		"connect_time": "2026-12-06 04:20:00 UTC", "tls": "TLS", "link": "s1092", "id": "1",
	} {
		if got := alice[r.col(name)]; got != want {
			t.Errorf("alice's %s = %q, want %q", name, got, want)
		}
	}
	if bob := r.rows[1]; bob[r.col("state")] != "idle" || bob[r.col("addr")] != "::1" || bob[r.col("link")] != "" {
		t.Errorf("bob: %v", bob)
	}
	r = s.query("SHOW SERVERS")
	if r.err != nil || len(r.rows) != 1 {
		t.Fatalf("SHOW SERVERS: %+v", r)
	}
	srv := r.rows[0]
	if srv[r.col("type")] != "S" || srv[r.col("remote_pid")] != "4242" || srv[r.col("addr")] != "db.example.com" ||
		srv[r.col("port")] != "5432" || srv[r.col("ptr")] != "s1092" || srv[r.col("link")] != "c1" {
		t.Errorf("server row %v", srv)
	}
}

func TestConsoleShowOthers(t *testing.T) {
	c, pools := newTestConsole(nil)
	s := start(t, c)
	r := s.query("SHOW VERSION;")
	if len(r.cols) != 1 || string(r.cols[0].Name) != "version" || len(r.rows) != 1 || r.rows[0][0] != "Querycop 1.2.3" {
		t.Errorf("SHOW VERSION: %+v", r)
	}
	r = s.query("SHOW LISTS;")
	lists := map[string]string{}
	for _, row := range r.rows {
		lists[row[0]] = row[1]
	}
	if len(r.cols) != 2 || lists["databases"] != "2" || lists["users"] != "2" || lists["pools"] != "3" ||
		lists["used_clients"] != "2" || lists["login_clients"] != "1" || lists["used_servers"] != "4" {
		t.Errorf("SHOW LISTS: %v", lists)
	}
	r = s.query("SHOW CONFIG;")
	if len(r.cols) != 4 || string(r.cols[3].Name) != "changeable" || len(r.rows) != 1 ||
		strings.Join(r.rows[0], "|") != "max_client_conn|1000|1000|no" {
		t.Errorf("SHOW CONFIG: %+v", r)
	}
	pools.Pause()
	r = s.query("SHOW DATABASES")
	if len(r.cols) != 17 || len(r.rows) != 3 || r.rows[0][0] != "pgbouncer" {
		t.Fatalf("SHOW DATABASES: %+v", r)
	}
	app := r.rows[1]
	for name, want := range map[string]string{
		"name": "app", "host": "db.example.com", "port": "5432", "pool_size": "20", "server_lifetime": "3000",
		"current_connections": "4", "current_client_connections": "6", "paused": "1", "force_user": "<NULL>",
	} {
		if got := app[r.col(name)]; got != want {
			t.Errorf("app's %s = %q, want %q", name, got, want)
		}
	}
	r = s.query("SHOW USERS")
	if len(r.rows) != 2 || r.rows[0][0] != "alice" || r.rows[0][5] != "3" {
		t.Errorf("SHOW USERS: %v", r.rows)
	}
	r = s.query("show help")
	if len(r.notices) != 1 || !strings.Contains(r.notices[0].Detail, "SHOW HELP|CONFIG|DATABASES") || r.tag != "SHOW" {
		t.Errorf("SHOW HELP: %+v", r)
	}
}

func TestConsolePauseResumeReload(t *testing.T) {
	reloads := 0
	var reloadErr error
	c, pools := newTestConsole(func() error { reloads++; return reloadErr })
	s := start(t, c)
	if r := s.query("RESUME"); r.err == nil || r.err.Message != "pooler is not paused/suspended" {
		t.Errorf("RESUME while running: %+v", r.err)
	}
	if r := s.query("PAUSE"); r.err != nil || r.tag != "PAUSE" || !pools.Paused() {
		t.Errorf("PAUSE: %+v, paused %v", r, pools.Paused())
	}
	if r := s.query("pause;"); r.err == nil || r.err.Message != "already suspended/paused" {
		t.Errorf("PAUSE twice: %+v", r.err)
	}
	if r := s.query("PAUSE app"); r.err == nil || r.err.Code != codeFeatureNotSupported {
		t.Errorf("PAUSE of one database: %+v", r.err)
	}
	if r := s.query("RESUME"); r.err != nil || r.tag != "RESUME" || pools.Paused() {
		t.Errorf("RESUME: %+v, paused %v", r, pools.Paused())
	}
	if r := s.query("RELOAD"); r.err != nil || r.tag != "RELOAD" || reloads != 1 {
		t.Errorf("RELOAD: %+v, %d reloads", r, reloads)
	}
	reloadErr = errors.New("line 3: bad entry")
	if r := s.query("RELOAD"); r.err == nil || r.err.Code != codeConfigFileError || !strings.Contains(r.err.Message, "line 3") {
		t.Errorf("failed RELOAD: %+v", r.err)
	}
}

func TestConsoleRefusals(t *testing.T) {
	c, _ := newTestConsole(nil)
	s := start(t, c)
	for q, code := range map[string]string{
		"SHOW":                    codeSyntaxError,
		"SHOW FDS":                codeUndefinedObject,
		"SHOW POOLS; SHOW STATS":  codeSyntaxError,
		"SELECT 1":                codeSyntaxError,
		"KILL app":                codeFeatureNotSupported,
		"SET default_pool_size=5": codeFeatureNotSupported,
		"SHUTDOWN":                codeFeatureNotSupported,
	} {
		r := s.query(q)
		if r.err == nil || r.err.Code != code || r.err.Severity != "ERROR" {
			t.Errorf("%q: %+v, want ERROR %s", q, r.err, code)
		}
	}
	// The session is still usable after errors.
	if r := s.query(""); !r.empty || r.err != nil {
		t.Errorf("empty query: %+v", r)
	}
	if r := s.query("SHOW VERSION"); r.err != nil || len(r.rows) != 1 {
		t.Errorf("SHOW VERSION after errors: %+v", r)
	}
}

// The extended protocol ends the session with a clear FATAL, as in
// PgBouncer; drivers must use the simple protocol.
func TestConsoleExtendedProtocol(t *testing.T) {
	c, _ := newTestConsole(nil)
	s := start(t, c)
	s.fe.Send(&pgproto3.Parse{Query: "SHOW POOLS"})
	s.fe.Send(&pgproto3.Sync{})
	if err := s.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	e, ok := s.receive().(*pgproto3.ErrorResponse)
	if !ok || e.Severity != "FATAL" || e.Code != codeFeatureNotSupported || !strings.Contains(e.Message, "simple query protocol") {
		t.Fatalf("after Parse: %+v", e)
	}
	select {
	case reason := <-s.done:
		s.done <- reason
		if reason != "protocol-violation" {
			t.Errorf("reason %q", reason)
		}
	case <-time.After(5 * time.Second):
		t.Error("the session did not end")
	}
}

func TestConsoleTerminate(t *testing.T) {
	c, _ := newTestConsole(nil)
	s := start(t, c)
	s.fe.Send(&pgproto3.Terminate{})
	if err := s.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case reason := <-s.done:
		s.done <- reason
		if reason != "client-close" {
			t.Errorf("reason %q, want client-close", reason)
		}
	case <-time.After(5 * time.Second):
		t.Error("Serve did not return after Terminate")
	}
}

// An oversized message ends the session without reading it all.
func TestConsoleOversizedQuery(t *testing.T) {
	c, _ := newTestConsole(nil)
	s := start(t, c)
	go func() {
		s.fe.Send(&pgproto3.Query{String: strings.Repeat("x", maxQueryLen+10)})
		_ = s.fe.Flush()
	}()
	e, ok := s.receive().(*pgproto3.ErrorResponse)
	if !ok || e.Severity != "FATAL" || e.Code != codeProtocolViolation {
		t.Fatalf("oversized query: %+v", e)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{AdminUsers: []string{"ops", "", "x"}}).Validate(); err == nil || !strings.Contains(err.Error(), "empty user name") {
		t.Errorf("empty name: %v", err)
	}
	if err := (Config{AdminUsers: []string{"ops"}}).Validate(); err != nil {
		t.Error(err)
	}
	if (Config{}).Enabled() {
		t.Error("enabled without users")
	}
}
