package wire_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
	"github.com/querycop/querycop/wire"
)

// Integration tests of transaction pooling against the real cluster. Where
// the gateway's answer can be compared with PostgreSQL's own (a direct
// connection), the direct answer is the reference.

// txGatewayPrep is txGateway with a limit on prepared statements per backend.
func txGatewayPrep(t *testing.T, size, maxPrepared int) *gateway {
	t.Helper()
	pcfg := testPoolConfig()
	pcfg.Size = size
	return startPooledGateway(t, backendConfig(pgtest.Require(t), backend.TLSDisable), pcfg, func(w *wire.Config) {
		w.PoolMode = wire.TransactionMode
		w.MaxPreparedStatements = maxPrepared
	})
}

// txConnect is a pgconn client of g as u_scram.
func txConnect(t *testing.T, g *gateway) *pgconn.PgConn {
	t.Helper()
	return g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
}

// ---------------------------------------------------------------------------
// Raw protocol clients.

// rawConn is a protocol-level client: through the gateway (authenticated by
// hand) or direct to the cluster (a hijacked pgconn).
type rawConn struct {
	conn net.Conn
	fe   *pgproto3.Frontend
}

// rawGateway opens a client connection to g and authenticates it with the
// cleartext password exchange the gateway asks for.
func rawGateway(t *testing.T, g *gateway) *rawConn {
	t.Helper()
	return rawGatewayParams(t, g, nil)
}

// rawGatewayParams is rawGateway with more start-up parameters.
func rawGatewayParams(t *testing.T, g *gateway, extra map[string]string) *rawConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", g.addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial gateway: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	params := map[string]string{"user": pgtest.UserSCRAM, "database": pgtest.Database}
	for k, v := range extra {
		params[k] = v
	}
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params})
	if err := fe.Flush(); err != nil {
		t.Fatalf("startup: %v", err)
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("startup: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationCleartextPassword:
			fe.Send(&pgproto3.PasswordMessage{Password: pgtest.PassSCRAM})
			if err := fe.Flush(); err != nil {
				t.Fatalf("password: %v", err)
			}
		case *pgproto3.AuthenticationOk, *pgproto3.ParameterStatus, *pgproto3.BackendKeyData:
		case *pgproto3.ErrorResponse:
			t.Fatalf("startup refused: %s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			_ = conn.SetDeadline(time.Time{})
			return &rawConn{conn: conn, fe: fe}
		default:
			t.Fatalf("startup: unexpected %T", msg)
		}
	}
}

// rawDirect is a protocol-level client straight to the cluster.
func rawDirect(t *testing.T, extra ...string) *rawConn {
	t.Helper()
	c := pgtest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pc, err := pgconn.Connect(ctx, c.ConnString(pgtest.UserSCRAM, pgtest.PassSCRAM, pgtest.Database)+" "+strings.Join(extra, " "))
	if err != nil {
		t.Fatalf("direct connection: %v", err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatalf("hijack: %v", err)
	}
	t.Cleanup(func() { hc.Conn.Close() })
	return &rawConn{conn: hc.Conn, fe: hc.Frontend}
}

// run writes msgs in one go, then reads until as many ReadyForQuery as
// msgs hold Sync and Query messages, and returns a transcript of what came.
func (rc *rawConn) run(t *testing.T, msgs ...pgproto3.FrontendMessage) []string {
	t.Helper()
	ready := 0
	for _, m := range msgs {
		switch m.(type) {
		case *pgproto3.Sync, *pgproto3.Query:
			ready++
		}
		rc.fe.Send(m)
	}
	_ = rc.conn.SetDeadline(time.Now().Add(20 * time.Second))
	defer rc.conn.SetDeadline(time.Time{})
	if err := rc.fe.Flush(); err != nil {
		t.Fatalf("write: %v", err)
	}
	var out []string
	for ready > 0 {
		msg, err := rc.fe.Receive()
		if err != nil {
			t.Fatalf("read after %q: %v", out, err)
		}
		if line, ok := describeMsg(msg); ok {
			out = append(out, line)
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			ready--
		}
	}
	return out
}

// describeMsg is the transcript line of a backend message: its type and the
// fields that matter to a client. ParameterStatus is left out.
func describeMsg(msg pgproto3.BackendMessage) (string, bool) {
	switch m := msg.(type) {
	case *pgproto3.ParameterStatus:
		return "", false
	case *pgproto3.ParseComplete:
		return "ParseComplete", true
	case *pgproto3.BindComplete:
		return "BindComplete", true
	case *pgproto3.CloseComplete:
		return "CloseComplete", true
	case *pgproto3.NoData:
		return "NoData", true
	case *pgproto3.EmptyQueryResponse:
		return "EmptyQueryResponse", true
	case *pgproto3.PortalSuspended:
		return "PortalSuspended", true
	case *pgproto3.DataRow:
		vals := make([]string, len(m.Values))
		for i, v := range m.Values {
			if v == nil {
				vals[i] = "NULL"
			} else {
				vals[i] = strconv.Quote(string(v))
			}
		}
		return "DataRow " + strings.Join(vals, ","), true
	case *pgproto3.CommandComplete:
		return "CommandComplete " + string(m.CommandTag), true
	case *pgproto3.ErrorResponse:
		return fmt.Sprintf("ErrorResponse %s %s", m.Code, m.Message), true
	case *pgproto3.NoticeResponse:
		return fmt.Sprintf("NoticeResponse %s %s", m.Code, m.Message), true
	case *pgproto3.ReadyForQuery:
		return "ReadyForQuery " + string(m.TxStatus), true
	case *pgproto3.RowDescription:
		fs := make([]string, len(m.Fields))
		for i, f := range m.Fields {
			fs[i] = fmt.Sprintf("%s:oid=%d:size=%d:mod=%d:fmt=%d:table=%d:col=%d",
				f.Name, f.DataTypeOID, f.DataTypeSize, f.TypeModifier, f.Format, f.TableOID, f.TableAttributeNumber)
		}
		return "RowDescription " + strings.Join(fs, ","), true
	case *pgproto3.ParameterDescription:
		return fmt.Sprintf("ParameterDescription %v", m.ParameterOIDs), true
	default:
		return fmt.Sprintf("%T", msg), true
	}
}

// Message constructors, short for the sequences below.
func txParse(name, sql string) *pgproto3.Parse { return &pgproto3.Parse{Name: name, Query: sql} }
func txBind(stmt string, params ...string) *pgproto3.Bind {
	b := &pgproto3.Bind{PreparedStatement: stmt}
	for _, p := range params {
		b.Parameters = append(b.Parameters, []byte(p))
	}
	return b
}
func txExecute() *pgproto3.Execute       { return &pgproto3.Execute{} }
func txSync() *pgproto3.Sync             { return &pgproto3.Sync{} }
func txQuery(sql string) *pgproto3.Query { return &pgproto3.Query{String: sql} }
func txDescribe(name string) *pgproto3.Describe {
	return &pgproto3.Describe{ObjectType: 'S', Name: name}
}
func txClose(name string) *pgproto3.Close { return &pgproto3.Close{ObjectType: 'S', Name: name} }

// compareWithDirect runs each batch of a sequence on a fresh direct
// connection and on a fresh raw client of g, and reports any difference.
func compareWithDirect(t *testing.T, g *gateway, batches ...[]pgproto3.FrontendMessage) (direct, gw [][]string) {
	t.Helper()
	d := rawDirect(t)
	c := rawGateway(t, g)
	for i, b := range batches {
		want := d.run(t, b...)
		got := c.run(t, b...)
		direct, gw = append(direct, want), append(gw, got)
		if strings.Join(want, "\n") != strings.Join(got, "\n") {
			t.Errorf("batch %d (%s): the gateway's answer differs from PostgreSQL's\ndirect:  %q\ngateway: %q", i+1, batchString(b), want, got)
		}
	}
	return direct, gw
}

func batchString(b []pgproto3.FrontendMessage) string {
	parts := make([]string, len(b))
	for i, m := range b {
		switch m := m.(type) {
		case *pgproto3.Parse:
			parts[i] = fmt.Sprintf("Parse(%q,%q)", m.Name, m.Query)
		case *pgproto3.Bind:
			parts[i] = fmt.Sprintf("Bind(%q)", m.PreparedStatement)
		case *pgproto3.Execute:
			parts[i] = "Execute"
		case *pgproto3.Sync:
			parts[i] = "Sync"
		case *pgproto3.Query:
			parts[i] = fmt.Sprintf("Query(%q)", m.String)
		case *pgproto3.Describe:
			parts[i] = fmt.Sprintf("Describe(%c,%q)", m.ObjectType, m.Name)
		case *pgproto3.Close:
			parts[i] = fmt.Sprintf("Close(%c,%q)", m.ObjectType, m.Name)
		default:
			parts[i] = fmt.Sprintf("%T", m)
		}
	}
	return strings.Join(parts, " ")
}

// ---------------------------------------------------------------------------
// 1. Many clients, few backends.

func TestTxManyClientsFewBackends(t *testing.T) {
	c := pgtest.Require(t)
	obs := observer(t, c)
	mustQuery(t, obs, "drop table if exists txtest_many; create table txtest_many(client int, n int, pid int); select 1")
	t.Cleanup(func() { obs.Exec(context.Background(), "drop table if exists txtest_many").ReadAll() })
	waitNoBackends(t, obs, pgtest.UserSCRAM)
	g := txGateway(t, 10)

	const clients, txs = 200, 10
	var errs testkit.ErrorLog
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Every client connects first (20 handshakes at a time, so a loaded
	// machine does not hit the login timeout), then all run at once.
	conns := make([]*pgconn.PgConn, clients)
	sem := make(chan struct{}, 20)
	start := time.Now()
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			cc, err := g.dial(ctx, pgtest.UserSCRAM, pgtest.PassSCRAM)
			if err != nil {
				errs.Add(fmt.Errorf("client %d connect: %w", i, err))
				return
			}
			conns[i] = cc
		}(i)
	}
	wg.Wait()
	for _, cc := range conns {
		if cc != nil {
			t.Cleanup(func() { cc.Close(context.Background()) })
		}
	}
	t.Logf("%d clients connected in %s", clients, time.Since(start))
	start = time.Now()
	stop := sampleBackends(obs, pgtest.UserSCRAM)
	for i, cc := range conns {
		if cc == nil {
			continue
		}
		wg.Add(1)
		go func(id int, cc *pgconn.PgConn) {
			defer wg.Done()
			for j := 0; j < txs; j++ {
				// The transaction's first round trip attaches a backend.
				pid, err := query(ctx, cc, "begin; select pg_backend_pid()")
				if err != nil {
					errs.Add(fmt.Errorf("client %d pid: %w", id, err))
					return
				}
				ins, err := query(ctx, cc, fmt.Sprintf("insert into txtest_many values (%d, %d, pg_backend_pid()) returning pid", id, j))
				if err != nil {
					errs.Add(fmt.Errorf("client %d insert: %w", id, err))
					return
				}
				if ins != pid {
					errs.Add(fmt.Errorf("client %d: transaction moved from backend %s to %s", id, pid, ins))
				}
				if _, err := query(ctx, cc, "commit"); err != nil {
					errs.Add(fmt.Errorf("client %d commit: %w", id, err))
					return
				}
				// A single statement outside a transaction.
				want := fmt.Sprint(id*1000 + j)
				got, err := query(ctx, cc, "select "+want)
				if err != nil || got != want {
					errs.Add(fmt.Errorf("client %d: select %s = %q, %v", id, want, got, err))
					return
				}
			}
		}(i, cc)
	}
	wg.Wait()
	most, samples, sampleErr := stop()
	if errs.Count() > 0 {
		t.Errorf("clients failed: %s", errs.String())
	}
	if sampleErr != nil {
		t.Errorf("sampling pg_stat_activity: %v", sampleErr)
	}
	if most > 10 {
		t.Errorf("%d u_scram backends seen on the server, POOL_SIZE=10", most)
	}
	if n := mustQuery(t, obs, "select count(*) from txtest_many"); n != fmt.Sprint(clients*txs) {
		t.Errorf("%s rows inserted, want %d", n, clients*txs)
	}
	pids := mustQuery(t, obs, "select count(distinct pid) from txtest_many")
	shared := mustQuery(t, obs, "select max(n) from (select count(distinct client) n from txtest_many group by pid) s")
	// 200 clients on at most 10 backends: some backend served at least 20.
	if p, _ := strconv.Atoi(pids); p > 10 || p < 1 {
		t.Errorf("rows were inserted by %s distinct backends, want 1..10", pids)
	}
	if s, _ := strconv.Atoi(shared); s < clients/10 {
		t.Errorf("at most %s distinct clients on one backend, want at least %d", shared, clients/10)
	}
	t.Logf("%s; %d samples, at most %d backends; %s backends, up to %s clients on one; stats %+v", time.Since(start), samples, most, pids, shared, g.srv.Stats())
}

// ---------------------------------------------------------------------------
// 2. Prepared statements.

func TestTxPgxPreparedManyQueries(t *testing.T) {
	g := txGateway(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var errs testkit.ErrorLog
	for i := 0; i < 30; i++ {
		conn := pgxConnect(t, g, "")
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			own := fmt.Sprintf("select $1::int * %d + 0 * %d", i+1, i) // text differs per client
			for j := 0; j < 10; j++ {
				var a int
				if err := conn.QueryRow(ctx, own, j).Scan(&a); err != nil || a != j*(i+1) {
					errs.Add(fmt.Errorf("client %d %q(%d) = %d, %v", i, own, j, a, err))
					return
				}
				var s string
				if err := conn.QueryRow(ctx, "select $1::text || '-' || $2::int", fmt.Sprint("c", i), j).Scan(&s); err != nil || s != fmt.Sprintf("c%d-%d", i, j) {
					errs.Add(fmt.Errorf("client %d shared query = %q, %v", i, s, err))
					return
				}
				tx, err := conn.Begin(ctx)
				if err != nil {
					errs.Add(err)
					return
				}
				var n int64
				if err := tx.QueryRow(ctx, "select $1::bigint + $2::bigint", int64(i), int64(j)).Scan(&n); err != nil || n != int64(i+j) {
					errs.Add(fmt.Errorf("client %d in tx: %d, %v", i, n, err))
					tx.Rollback(ctx)
					return
				}
				if err := tx.Commit(ctx); err != nil {
					errs.Add(err)
					return
				}
			}
		}(i)
	}
	wg.Wait()
	if errs.Count() > 0 {
		t.Errorf("pgx clients failed: %s", errs.String())
	}
	st := g.srv.Stats()
	if st.PreparedStatementHits == 0 || st.PreparedStatementMisses == 0 {
		t.Errorf("prepared statement hits %d, misses %d: want both > 0", st.PreparedStatementHits, st.PreparedStatementMisses)
	}
}

func TestTxPgbenchPrepared(t *testing.T) {
	c := pgtest.Require(t)
	bin, err := exec.LookPath("pgbench")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("pgbench is required when CI=true: %v", err)
		}
		t.Skipf("pgbench not found: %v", err)
	}
	env := append(os.Environ(), "PGPASSWORD="+pgtest.PassSCRAM, "PGSSLMODE=disable", "PGGSSENCMODE=disable", "PGCONNECT_TIMEOUT=20")
	run := func(timeout time.Duration, port int, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		args = append(args, "-h", "127.0.0.1", "-p", fmt.Sprint(port), "-U", pgtest.UserSCRAM, pgtest.Database)
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	obs := observer(t, c)
	if mustQuery(t, obs, "select (to_regclass('pgbench_accounts') is not null and to_regclass('pgbench_branches') is not null and to_regclass('pgbench_tellers') is not null and to_regclass('pgbench_history') is not null)::text") != "true" {
		if out, err := run(120*time.Second, c.Port, "-i", "-s", "1", "-q"); err != nil {
			t.Fatalf("pgbench -i directly against the cluster: %v\n%s", err, out)
		}
		t.Cleanup(func() {
			obs.Exec(context.Background(), "drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers").ReadAll()
		})
	}
	g := txGateway(t, 5)
	out, err := run(60*time.Second, g.port, "-n", "-M", "prepared", "-S", "-c", "20", "-j", "2", "-T", "5")
	if err != nil {
		t.Fatalf("pgbench -M prepared through the gateway: %v\n%s", err, out)
	}
	if !strings.Contains(out, "number of failed transactions: 0") || !regexp.MustCompile(`(?m)^tps = [0-9.]+`).MatchString(out) {
		t.Errorf("pgbench output lacks \"number of failed transactions: 0\" or a tps line:\n%s", out)
	}
	st := g.srv.Stats()
	if st.PreparedStatementHits == 0 {
		t.Errorf("no prepared statement hits after pgbench -M prepared: %+v", st)
	}
	t.Logf("stats %+v", st)
}

// A statement parsed on one backend is bound on another.
func TestTxRawPreparedBackendSwitch(t *testing.T) {
	g := txGateway(t, 2)
	rc := rawGateway(t, g)
	got := rc.run(t, txParse("s1", "select $1::int * 2"), txParse("", "select pg_backend_pid()"), txBind(""), txExecute(), txSync())
	if len(got) != 6 || got[0] != "ParseComplete" || got[1] != "ParseComplete" || got[2] != "BindComplete" || !strings.HasPrefix(got[3], "DataRow ") {
		t.Fatalf("Parse s1 + pid: %q", got)
	}
	first := strings.Trim(strings.TrimPrefix(got[3], "DataRow "), `"`)

	// Make the first backend busy with other clients' open transactions.
	o1, o2 := txConnect(t, g), txConnect(t, g)
	mustQuery(t, o1, "begin")
	holder, other := o1, o2
	if mustQuery(t, o1, "select pg_backend_pid()") != first {
		mustQuery(t, o2, "begin")
		if p := mustQuery(t, o2, "select pg_backend_pid()"); p != first {
			t.Fatalf("with POOL_SIZE=2, neither open transaction is on backend %s (o2 on %s)", first, p)
		}
		mustQuery(t, o1, "commit")
		holder, other = o2, o1
	}
	_ = other

	got = rc.run(t, txBind("s1", "21"), txExecute(), txParse("", "select pg_backend_pid()"), txBind(""), txExecute(), txSync())
	want := []string{"BindComplete", `DataRow "42"`, "CommandComplete SELECT 1", "ParseComplete", "BindComplete"}
	if len(got) != 8 || strings.Join(got[:5], "|") != strings.Join(want, "|") {
		t.Fatalf("Bind s1 on the other backend: %q, want %q then the pid", got, want)
	}
	if second := strings.Trim(strings.TrimPrefix(got[5], "DataRow "), `"`); second == first {
		t.Fatalf("the second use ran on backend %s again although it was held by another client", first)
	}
	mustQuery(t, holder, "commit")

	// And once more on whichever backend comes.
	got = rc.run(t, txBind("s1", "-5"), txExecute(), txSync())
	if strings.Join(got, "|") != `BindComplete|DataRow "-10"|CommandComplete SELECT 1|ReadyForQuery I` {
		t.Errorf("third use: %q", got)
	}
}

// Two clients use one statement name for different queries.
func TestTxSameStatementNameTwoClients(t *testing.T) {
	g := txGateway(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b := txConnect(t, g), txConnect(t, g)
	if _, err := a.Prepare(ctx, "s1", "select $1::int * 2", nil); err != nil {
		t.Fatalf("A prepare: %v", err)
	}
	if _, err := b.Prepare(ctx, "s1", "select $1::text || '!'", nil); err != nil {
		t.Fatalf("B prepare: %v", err)
	}
	for i := 0; i < 5; i++ {
		rb := b.ExecPrepared(ctx, "s1", [][]byte{[]byte(fmt.Sprint("b", i))}, nil, nil).Read()
		if rb.Err != nil {
			t.Fatalf("B exec %d: %v", i, rb.Err)
		}
		if len(rb.Rows) != 1 || string(rb.Rows[0][0]) != fmt.Sprintf("b%d!", i) {
			t.Errorf("B's s1(b%d) = %q, want b%d!", i, rb.Rows, i)
		}
		res := a.ExecPrepared(ctx, "s1", [][]byte{[]byte(fmt.Sprint(i))}, nil, nil).Read()
		if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != fmt.Sprint(i*2) {
			t.Errorf("A's s1(%d) = %q, %v; want %d", i, res.Rows, res.Err, i*2)
		}
	}
}

func TestTxPreparedEviction(t *testing.T) {
	g := txGatewayPrep(t, 1, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cc := txConnect(t, g)
	for k := 1; k <= 6; k++ {
		if _, err := cc.Prepare(ctx, fmt.Sprint("e", k), fmt.Sprintf("select $1::int + %d", k*100), nil); err != nil {
			t.Fatalf("prepare e%d: %v", k, err)
		}
	}
	for round := 0; round < 2; round++ {
		for k := 1; k <= 6; k++ {
			res := cc.ExecPrepared(ctx, fmt.Sprint("e", k), [][]byte{[]byte("7")}, nil, nil).Read()
			if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != fmt.Sprint(k*100+7) {
				t.Errorf("round %d: e%d(7) = %q, %v; want %d", round, k, res.Rows, res.Err, k*100+7)
			}
		}
	}
	if st := g.srv.Stats(); st.PreparedStatementEvictions == 0 {
		t.Errorf("no evictions with MaxPreparedStatements=3 and 6 statements: %+v", st)
	}
	// pg_prepared_statements lists the session's named statements, protocol
	// level ones included, never the unnamed one.
	res, err := cc.Exec(ctx, "begin; select count(*), count(*) filter (where not from_sql) from pg_prepared_statements; commit").ReadAll()
	if err != nil || len(res) != 3 || len(res[1].Rows) != 1 {
		t.Fatalf("counting pg_prepared_statements: %v %v", res, err)
	}
	n, _ := strconv.Atoi(string(res[1].Rows[0][0]))
	if n > 3 || n < 1 {
		t.Errorf("%d statements in pg_prepared_statements on the backend, want 1..3 (MaxPreparedStatements=3)", n)
	}
	t.Logf("%d named statements in pg_prepared_statements; stats %+v", n, g.srv.Stats())

	// An eviction planned in a batch the server abandons after an error
	// never happens: the statement is still on the server.
	t.Run("eviction in a failed batch", func(t *testing.T) {
		g := txGatewayPrep(t, 1, 3)
		compareWithDirect(t, g,
			[]pgproto3.FrontendMessage{txParse("a", "select 'a'"), txParse("b", "select 'b'"), txParse("c", "select 'c'"), txSync()},
			[]pgproto3.FrontendMessage{txParse("", "select 1/0"), txBind(""), txExecute(), txParse("d", "select 'd'"), txSync()},
			[]pgproto3.FrontendMessage{txBind("a"), txExecute(), txSync()},
			[]pgproto3.FrontendMessage{txBind("b"), txExecute(), txBind("c"), txExecute(), txSync()},
		)
	})
}

func TestTxDescribeStatement(t *testing.T) {
	g := txGateway(t, 2)
	const q = "select $1::int * 2 as doubled, $2::text as label, relname from pg_class where oid = $3::oid"
	direct, gw := compareWithDirect(t, g,
		[]pgproto3.FrontendMessage{txParse("s1", q), txDescribe("s1"), txSync()},
		// Again in a later transaction (a describe of an existing statement).
		[]pgproto3.FrontendMessage{txDescribe("s1"), txSync()},
	)
	for _, got := range [][]string{direct[0], gw[0]} {
		if len(got) != 4 || got[0] != "ParseComplete" || !strings.HasPrefix(got[1], "ParameterDescription [23 25 26]") || !strings.HasPrefix(got[2], "RowDescription doubled:") {
			t.Errorf("Parse+Describe+Sync: %q, want ParseComplete, ParameterDescription [23 25 26], RowDescription, ReadyForQuery", got)
		}
	}
}

func TestTxCloseThenBind(t *testing.T) {
	g := txGateway(t, 2)
	_, gw := compareWithDirect(t, g,
		[]pgproto3.FrontendMessage{txParse("s1", "select 1"), txBind("s1"), txExecute(), txSync()},
		[]pgproto3.FrontendMessage{txClose("s1"), txSync()},
		[]pgproto3.FrontendMessage{txBind("s1"), txExecute(), txSync()},
		// Closing a name that does not exist succeeds.
		[]pgproto3.FrontendMessage{txClose("s1"), txSync()},
	)
	want := `ErrorResponse 26000 prepared statement "s1" does not exist`
	if len(gw) > 2 && (len(gw[2]) == 0 || gw[2][0] != want) {
		t.Errorf("Bind after Close through the gateway: %q, want %q", gw[2], want)
	}
}

// ---------------------------------------------------------------------------
// 3. Pipeline equivalence.

func TestTxPipelineEquivalence(t *testing.T) {
	g := txGateway(t, 1)
	t.Run("error mid pipeline", func(t *testing.T) {
		compareWithDirect(t, g, []pgproto3.FrontendMessage{
			txParse("s_ok", "select 1"), txBind("s_ok"), txExecute(), txSync(),
			txParse("", "select 1/0"), txBind(""), txExecute(),
			txParse("s2", "select 2"), txBind("s2"), txExecute(), txSync(),
			txBind("s_ok"), txExecute(), txSync(),
		})
	})
	t.Run("error mid pipeline, statements already on the backend", func(t *testing.T) {
		// The same texts again: now the gateway finds them prepared.
		compareWithDirect(t, g, []pgproto3.FrontendMessage{
			txParse("s_ok", "select 1"), txBind("s_ok"), txExecute(), txSync(),
			txParse("", "select 1/0"), txBind(""), txExecute(),
			txParse("s2", "select 2"), txBind("s2"), txExecute(), txSync(),
			txBind("s_ok"), txExecute(), txSync(),
		})
	})
	t.Run("mixed simple and extended", func(t *testing.T) {
		compareWithDirect(t, g, []pgproto3.FrontendMessage{
			txQuery("begin"), txParse("m1", "select $1::int + 1"), txBind("m1", "41"), txExecute(), txSync(),
			txQuery("select 'in tx'"), txBind("m1", "x"), txExecute(), txSync(),
			txBind("m1", "1"), txExecute(), txSync(), txQuery("rollback"),
			txBind("m1", "2"), txExecute(), txSync(),
		})
	})
	t.Run("statement parsed after an error does not exist", func(t *testing.T) {
		compareWithDirect(t, g,
			[]pgproto3.FrontendMessage{txParse("", "select 1/0"), txBind(""), txExecute(), txParse("s_skip", "select 'skip'"), txSync()},
			[]pgproto3.FrontendMessage{txBind("s_skip"), txExecute(), txSync()},
		)
	})
	t.Run("unnamed statement survives a named Parse", func(t *testing.T) {
		compareWithDirect(t, g,
			[]pgproto3.FrontendMessage{txParse("s_a", "select 'named'"), txSync()},
			[]pgproto3.FrontendMessage{txParse("", "select 'unnamed'"), txParse("s_b", "select 'named'"), txBind(""), txExecute(), txSync()},
		)
	})
	t.Run("duplicate statement name", func(t *testing.T) {
		compareWithDirect(t, g,
			[]pgproto3.FrontendMessage{txParse("s_dup", "select 'first'"), txSync()},
			[]pgproto3.FrontendMessage{txParse("s_dup", "select 'second'"), txSync()},
			[]pgproto3.FrontendMessage{txBind("s_dup"), txExecute(), txSync()},
		)
	})
}

// ---------------------------------------------------------------------------
// 4. SET and LISTEN.

func TestTxSetAndReset(t *testing.T) {
	g := txGateway(t, 2)
	a, b := txConnect(t, g), txConnect(t, g)
	defApp := mustQuery(t, b, "show application_name")
	defPath := mustQuery(t, b, "show search_path")
	const appA, pathA = "client_a", "myschema, public"
	if defApp == appA || defPath == pathA {
		t.Fatalf("defaults %q %q equal client A's values", defApp, defPath)
	}
	mustQuery(t, a, "SET application_name = 'client_a'")
	mustQuery(t, a, "SET search_path = myschema, public")

	type seen struct{ app, path, pid string }
	runClient := func(c *pgconn.PgConn, n int) ([]seen, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var out []seen
		for i := 0; i < n; i++ {
			var s seen
			var err error
			if i%2 == 0 {
				if _, err = query(ctx, c, "begin"); err != nil {
					return out, err
				}
			}
			if s.app, err = query(ctx, c, "show application_name"); err != nil {
				return out, err
			}
			if s.path, err = query(ctx, c, "show search_path"); err != nil {
				return out, err
			}
			if s.pid, err = query(ctx, c, "select pg_backend_pid()"); err != nil {
				return out, err
			}
			if i%2 == 0 {
				if _, err = query(ctx, c, "commit"); err != nil {
					return out, err
				}
			}
			out = append(out, s)
		}
		return out, nil
	}
	var seenA, seenB []seen
	var errA, errB error
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); seenA, errA = runClient(a, 40) }()
	go func() { defer wg.Done(); seenB, errB = runClient(b, 40) }()
	wg.Wait()
	if errA != nil || errB != nil {
		t.Fatalf("client A: %v; client B: %v", errA, errB)
	}
	pidsA := map[string]bool{}
	for _, s := range seenA {
		pidsA[s.pid] = true
		if s.app != appA || s.path != pathA {
			t.Errorf("client A on backend %s sees application_name %q, search_path %q; want %q, %q", s.pid, s.app, s.path, appA, pathA)
		}
	}
	shared := 0
	for _, s := range seenB {
		if pidsA[s.pid] {
			shared++
		}
		if s.app != defApp || s.path != defPath {
			t.Errorf("client B on backend %s (used by A: %v) sees application_name %q, search_path %q; want the defaults %q, %q",
				s.pid, pidsA[s.pid], s.app, s.path, defApp, defPath)
		}
	}
	// Sequentially too: B right after A, likely on A's backend.
	for i := 0; i < 5; i++ {
		pa := mustQuery(t, a, "select pg_backend_pid()")
		if got := mustQuery(t, a, "show application_name"); got != appA {
			t.Errorf("client A sees application_name %q", got)
		}
		pb := mustQuery(t, b, "select pg_backend_pid()")
		if pb == pa {
			shared++
		}
		if got := mustQuery(t, b, "show application_name"); got != defApp {
			t.Errorf("client B right after A sees application_name %q, want %q", got, defApp)
		}
		if got := mustQuery(t, b, "show search_path"); got != defPath {
			t.Errorf("client B right after A sees search_path %q, want %q", got, defPath)
		}
	}
	if shared == 0 {
		t.Errorf("client B never ran on a backend client A had used: the test proved nothing")
	}

	mustQuery(t, a, "RESET application_name")
	for i := 0; i < 6; i++ {
		if got := mustQuery(t, a, "show application_name"); got != defApp {
			t.Errorf("after RESET application_name client A sees %q, want %q", got, defApp)
		}
		if got := mustQuery(t, a, "show search_path"); got != pathA {
			t.Errorf("after RESET application_name client A sees search_path %q, want %q", got, pathA)
		}
		mustQuery(t, b, "select 1")
	}
}

func TestTxListenRefused(t *testing.T) {
	g := txGatewayWith(t, 1, func(w *wire.Config) { w.TxPinning = wire.TxPinningRefuse })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := txConnect(t, g)
	wantRefusal := func(t *testing.T, what string, err error) {
		t.Helper()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			t.Errorf("%s: got %v, want SQLSTATE 0A000", what, err)
			return
		}
		if pgErr.Code != "0A000" || !strings.Contains(pgErr.Message, "LISTEN is not supported in transaction pooling mode") {
			t.Errorf("%s: got %s %q, want 0A000 \"LISTEN is not supported in transaction pooling mode\"", what, pgErr.Code, pgErr.Message)
		}
	}
	_, err := query(ctx, a, "LISTEN chan_a")
	wantRefusal(t, "LISTEN", err)
	if got := mustQuery(t, a, "select 1"); got != "1" {
		t.Errorf("select 1 after the refused LISTEN = %q", got)
	}

	t.Run("in a transaction block", func(t *testing.T) {
		mustQuery(t, a, "begin")
		_, err := query(ctx, a, "listen chan_a")
		wantRefusal(t, "LISTEN in a transaction", err)
		_, err = query(ctx, a, "select 1")
		if sqlState(err) != "25P02" {
			t.Errorf("statement after LISTEN in a transaction: %v, want 25P02", err)
		}
		if _, err := query(ctx, a, "rollback"); err != nil {
			t.Fatalf("rollback: %v", err)
		}
		if got := mustQuery(t, a, "select 1"); got != "1" {
			t.Errorf("select 1 after rollback = %q", got)
		}
	})

	t.Run("extended protocol", func(t *testing.T) {
		res := a.ExecParams(ctx, "listen chan_b", nil, nil, nil, nil).Read()
		wantRefusal(t, "LISTEN through Parse/Bind/Execute", res.Err)
	})

	t.Run("in a multi-statement query", func(t *testing.T) {
		_, err := query(ctx, a, "select 1; listen chan_c")
		wantRefusal(t, "select 1; LISTEN", err)
	})

	// Whatever came before, the backend must not be listening.
	if got := mustQuery(t, a, "select count(*) from pg_listening_channels()"); got != "0" {
		t.Errorf("the backend listens on %s channels after refused LISTENs", got)
	}
}

// ---------------------------------------------------------------------------
// 5. COPY.

func TestTxCopy(t *testing.T) {
	c := pgtest.Require(t)
	obs := observer(t, c)
	mustQuery(t, obs, "drop table if exists txtest_copy; create table txtest_copy(id int, v text); select 1")
	t.Cleanup(func() { obs.Exec(context.Background(), "drop table if exists txtest_copy").ReadAll() })
	g := txGateway(t, 2)
	cc := txConnect(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	const rows = 100000
	t0 := time.Now()
	data := copyRows(rows, "value", 0)
	tag, err := cc.CopyFrom(ctx, bytes.NewReader(data), "copy txtest_copy from stdin")
	if err != nil {
		t.Fatalf("COPY FROM STDIN: %v", err)
	}
	if tag.RowsAffected() != rows {
		t.Errorf("COPY FROM STDIN: %s, want %d rows", tag, rows)
	}
	var out bytes.Buffer
	tag, err = cc.CopyTo(ctx, &out, "copy (select * from txtest_copy order by id) to stdout")
	if err != nil {
		t.Fatalf("COPY TO STDOUT: %v", err)
	}
	if tag.RowsAffected() != rows || !bytes.Equal(out.Bytes(), data) {
		t.Errorf("COPY TO STDOUT: %s, %d bytes; want the %d bytes copied in", tag, out.Len(), len(data))
	}

	// Bad data on row 50000.
	bad := copyRows(rows, "second", 50000)
	_, err = cc.CopyFrom(ctx, bytes.NewReader(bad), "copy txtest_copy from stdin")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22P02" || !strings.Contains(pgErr.Message, "invalid input syntax") {
		t.Errorf("COPY with bad data: %v, want 22P02 invalid input syntax", err)
	}
	t.Logf("two COPYs of %d rows and a COPY TO in %s", rows, time.Since(t0))
	for i := 0; i < 3; i++ {
		if got := mustQuery(t, cc, "select count(*) from txtest_copy"); got != fmt.Sprint(rows) {
			t.Errorf("after the failed COPY: %s rows, want %d", got, rows)
		}
	}
	// And another COPY works.
	if _, err := cc.CopyFrom(ctx, strings.NewReader("-1\tlast\n"), "copy txtest_copy from stdin"); err != nil {
		t.Errorf("COPY after the failed one: %v", err)
	}
}

// copyRows is COPY text data for txtest_copy: rows "i\tlabel i", with row
// badRow's id not a number.
func copyRows(rows int, label string, badRow int) []byte {
	b := make([]byte, 0, rows*24)
	for i := 1; i <= rows; i++ {
		if i == badRow {
			b = append(b, "not-a-number"...)
		} else {
			b = strconv.AppendInt(b, int64(i), 10)
		}
		b = append(b, '\t')
		b = append(b, label...)
		b = append(b, ' ')
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, '\n')
	}
	return b
}

// ---------------------------------------------------------------------------
// 6. Disconnect mid-transaction.

func TestTxDisconnectMidTransaction(t *testing.T) {
	c := pgtest.Require(t)
	obs := observer(t, c)
	mustQuery(t, obs, "drop table if exists txtest_lock; create table txtest_lock(id int primary key, v int); insert into txtest_lock values (1, 0); select 1")
	t.Cleanup(func() { obs.Exec(context.Background(), "drop table if exists txtest_lock").ReadAll() })
	waitNoBackends(t, obs, pgtest.UserSCRAM)
	g := txGateway(t, 2)
	a := txConnect(t, g)
	mustQuery(t, a, "begin")
	mustQuery(t, a, "update txtest_lock set v = v + 1 where id = 1")
	a.Conn().Close() // abruptly: no Terminate

	b := txConnect(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	got, err := query(ctx, b, "begin; set local lock_timeout = '5s'; update txtest_lock set v = v + 10 where id = 1 returning v; commit")
	if err != nil {
		t.Fatalf("client B's update (%s): %v: the disconnected client's lock is still held", time.Since(start), err)
	}
	if got != "10" {
		t.Errorf("v = %s after B's update, want 10 (A's update rolled back)", got)
	}
	waitFor(t, 10*time.Second, "no u_scram backend idle in transaction", func() (bool, string) {
		n := mustQuery(t, obs, "select count(*) from pg_stat_activity where usename = 'u_scram' and state like 'idle in transaction%'")
		return n == "0", n + " idle in transaction"
	})
}

// A client that vanishes while its query runs, without a cancel request
// (a raw client; libpq and pgx send one when they close mid-query): the
// gateway waits for the answer on the client's goroutine only briefly,
// then watches the client again, so the query is cancelled well before it
// would have ended and the only backend serves the next client.
func TestTxDisconnectDuringQuery(t *testing.T) {
	c := pgtest.Require(t)
	obs := observer(t, c)
	waitNoBackends(t, obs, pgtest.UserSCRAM)
	g := txGateway(t, 1)
	a := rawGateway(t, g)
	a.fe.Send(&pgproto3.Query{String: "select pg_sleep(30)"})
	if err := a.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	running := "select count(*) from pg_stat_activity where state = 'active' and query = 'select pg_sleep(30)'"
	waitFor(t, 10*time.Second, "pg_sleep(30) to run", func() (bool, string) {
		n := mustQuery(t, obs, running)
		return n == "1", n + " running"
	})
	start := time.Now()
	a.conn.Close() // no Terminate, no cancel request
	waitFor(t, 10*time.Second, "the vanished client's query to stop", func() (bool, string) {
		n := mustQuery(t, obs, running)
		return n == "0", n + " running"
	})
	b := txConnect(t, g)
	if got := mustQuery(t, b, "select 'next client'"); got != "next client" {
		t.Errorf("next client on the only backend: %q", got)
	}
	t.Logf("query stopped and backend reused %s after the client vanished", time.Since(start).Round(time.Millisecond))
}

// ---------------------------------------------------------------------------
// 7. Cancel.

func TestTxCancel(t *testing.T) {
	c := pgtest.Require(t)
	obs := observer(t, c)
	g := txGateway(t, 1)
	cc := txConnect(t, g)

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
		defer cancel()
		_, err := query(ctx, cc, "select pg_sleep(30)")
		done <- err
	}()
	waitFor(t, 10*time.Second, "pg_sleep(30) to run", func() (bool, string) {
		n := mustQuery(t, obs, "select count(*) from pg_stat_activity where state = 'active' and query = 'select pg_sleep(30)'")
		return n == "1", n + " running"
	})
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cc.CancelRequest(ctx); err != nil {
		t.Fatalf("CancelRequest: %v", err)
	}
	select {
	case err := <-done:
		if sqlState(err) != "57014" {
			t.Errorf("cancelled query: %v, want 57014", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("cancel took %s", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("pg_sleep(30) not cancelled within 10s")
	}
	if got := mustQuery(t, cc, "select 'after cancel'"); got != "after cancel" {
		t.Errorf("query after cancel = %q", got)
	}

	t.Run("no backend held", func(t *testing.T) {
		// cc holds no backend; another client's query runs on the only one.
		other := txConnect(t, g)
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := query(ctx, other, "select pg_sleep(1.5)")
			done <- err
		}()
		waitFor(t, 10*time.Second, "pg_sleep(1.5) to run", func() (bool, string) {
			n := mustQuery(t, obs, "select count(*) from pg_stat_activity where state = 'active' and query = 'select pg_sleep(1.5)'")
			return n == "1", n + " running"
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := cc.CancelRequest(ctx); err != nil {
			t.Errorf("CancelRequest without a backend: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("another client's query was hit by the idle client's cancel: %v", err)
		}
		for i := 0; i < 3; i++ {
			if got := mustQuery(t, cc, "select pg_sleep(0.1)::text || 'ok'"); got != "ok" {
				t.Errorf("query after an idle cancel = %q", got)
			}
		}
	})
}

// ---------------------------------------------------------------------------
// 8. Metrics.

func TestTxMetrics(t *testing.T) {
	g := txGateway(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before := g.srv.Stats()
	for i := 0; i < 3; i++ {
		conn := pgxConnect(t, g, "")
		for j := 0; j < 5; j++ {
			var n int
			if err := conn.QueryRow(ctx, "select $1::int * 3", j).Scan(&n); err != nil || n != j*3 {
				t.Fatalf("pgx query: %d, %v", n, err)
			}
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	cc := txConnect(t, g)
	mustQuery(t, cc, "select 1")
	st := g.srv.Stats()
	if st.Transactions <= before.Transactions || st.Queries <= before.Queries ||
		st.PreparedStatementHits <= before.PreparedStatementHits || st.PreparedStatementMisses <= before.PreparedStatementMisses {
		t.Errorf("stats %+v: want Transactions, Queries, PreparedStatementHits and PreparedStatementMisses > 0", st)
	}
	if st.BackendHeld <= 0 {
		t.Errorf("BackendHeld = %s, want > 0", st.BackendHeld)
	}
	t.Logf("stats %+v", st)
}
