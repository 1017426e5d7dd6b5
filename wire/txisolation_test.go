package wire_test

import (
	"context"
	"fmt"
	"math/rand"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
	"github.com/querycop/querycop/wire"
)

// The isolation suite of transaction mode. The invariant: what a client
// observes is its own session, never another's. Each test runs two or more
// clients on a pool of one backend (so they share it for certain) or of a
// few, and compares what a client sees with what a direct connection to
// PostgreSQL shows for the same statements.

func txGatewayWith(t *testing.T, size int, adjust func(*wire.Config)) *gateway {
	t.Helper()
	pcfg := testPoolConfig()
	pcfg.Size = size
	return startPooledGateway(t, backendConfig(pgtest.Require(t), backend.TLSDisable), pcfg, func(w *wire.Config) {
		w.PoolMode = wire.TransactionMode
		w.MaxPreparedStatements = 200
		if adjust != nil {
			adjust(w)
		}
	})
}

// directConnect is a client straight to the cluster, the reference.
func directConnect(t *testing.T, extra ...string) *pgconn.PgConn {
	t.Helper()
	c := pgtest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg, err := pgconn.ParseConfig(c.ConnString(pgtest.UserSCRAM, pgtest.PassSCRAM, pgtest.Database) + " " + strings.Join(extra, " "))
	if err != nil {
		t.Fatal(err)
	}
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("direct connection: %v", err)
	}
	t.Cleanup(func() { pc.Close(context.Background()) })
	return pc
}

// answer is what a client sees for one query: its value, or its SQLSTATE.
func answer(c *pgconn.PgConn, sql string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	v, err := testkit.Query(ctx, c, sql)
	if err != nil {
		if code := testkit.SQLState(err); code != "" {
			return "ERROR " + code
		}
		return "ERROR " + err.Error()
	}
	return v
}

// sameAsDirect runs each statement on the gateway client and on a direct
// connection, and fails when the answers differ.
func sameAsDirect(t *testing.T, gw, direct *pgconn.PgConn, stmts ...string) {
	t.Helper()
	for _, sql := range stmts {
		if g, d := answer(gw, sql), answer(direct, sql); g != d {
			t.Errorf("%s: through the gateway %q, direct %q", sql, g, d)
		}
	}
}

// sessionView is what a fresh client must see: PostgreSQL's defaults.
const sessionView = `select current_setting('search_path') || '|' || current_setting('application_name') || '|' ||
	current_user || '|' || current_setting('default_transaction_isolation') || '|' ||
	(select count(*) from pg_listening_channels()) || '|' ||
	(select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()) || '|' ||
	(select count(*) from pg_class where relnamespace = pg_my_temp_schema()) || '|' ||
	(select count(*) from pg_prepared_statements where from_sql or name not like 'qc\_%') || '|' ||
	(select count(*) from pg_cursors)`

func TestTxIsolationSessionState(t *testing.T) {
	c := pgtest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Exec(ctx, "do $$begin if not exists (select from pg_roles where rolname = 'qc_auditor') then create role qc_auditor; end if; end$$; grant qc_auditor to "+pgtest.UserSCRAM); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name  string
		stmts []string // run by client A, one query each
		check []string // A must see what a direct connection sees
	}{
		{"set in a committed block", []string{"begin", "set search_path to evil", "commit"}, []string{"show search_path"}},
		{"set in a rolled back block", []string{"begin", "set search_path to evil", "rollback"}, []string{"show search_path"}},
		{"set role", []string{"set role qc_auditor"}, []string{"select current_user"}},
		{"session characteristics", []string{"set session characteristics as transaction isolation level serializable"}, []string{"show transaction_isolation"}},
		{"semicolon in a value", []string{"set application_name = 'a;b'"}, []string{"show application_name"}},
		{"temp table", []string{"create temp table qc_tmp(a int)", "insert into qc_tmp values (7)"}, []string{"select a from qc_tmp"}},
		{"select into temp", []string{"select 8 as a into temp qc_tmp2"}, []string{"select a from qc_tmp2"}},
		{"advisory lock", []string{"select pg_advisory_lock_shared(4242)"}, []string{"select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"}},
		{"listen in a DO block", []string{"do $$begin execute 'listen qc_foo'; end$$"}, []string{"select count(*) from pg_listening_channels()"}},
		{"set_config", []string{"select set_config('search_path', 'evil2', false)"}, []string{"show search_path"}},
		{"set names", []string{"set names 'UTF8'"}, []string{"show client_encoding"}},
		{"set schema", []string{"set schema 'evil3'"}, []string{"show search_path"}},
		{"set xml option", []string{"set xml option document"}, []string{"show xmloption"}},
		{"quoted name", []string{`set "search_path" = evil4`}, []string{"show search_path"}},
		{"multi-statement set", []string{"select 1; set search_path = evil5"}, []string{"show search_path"}},
		{"sql prepare", []string{"prepare qc_mine(int) as select $1 + 1"}, []string{"execute qc_mine(1)"}},
		{"load", []string{"load 'auto_explain'"}, []string{"select 1"}},
		{"deallocate of a name the client does not own", []string{"deallocate qc_nothing_of_mine"}, []string{"select 1"}},
		{"cursor with hold", []string{"declare qc_cur cursor with hold for select 42"}, []string{"fetch qc_cur"}},
		{"function changing a reported setting", []string{"create or replace function qc_set_app() returns void language sql as $$select set_config('application_name', 'from_fn', false)$$", "select qc_set_app()"}, []string{"show application_name"}},
	}
	for _, size := range []int{1, 3} {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("pool %d/%s", size, tc.name), func(t *testing.T) {
				g := txGatewayWith(t, size, nil)
				b := txConnect(t, g)
				fresh := answer(b, sessionView)
				a := txConnect(t, g)
				direct := directConnect(t)
				for _, sql := range tc.stmts {
					ga, da := answer(a, sql), answer(direct, sql)
					if ga != da {
						t.Errorf("%s: through the gateway %q, direct %q", sql, ga, da)
					}
				}
				// A keeps its session across transactions, as on a direct
				// connection.
				for i := 0; i < 3; i++ {
					sameAsDirect(t, a, direct, tc.check...)
				}
				if size > 1 {
					// B runs beside A and must never see A's state.
					for i := 0; i < 5; i++ {
						if got := answer(b, sessionView); got != fresh {
							t.Errorf("client B sees %q beside client A, want %q", got, fresh)
						}
					}
					sameAsDirect(t, a, direct, tc.check...)
				}
				a.Close(context.Background())
				// After A leaves, its backend is B's: still nothing of A's.
				for i := 0; i < 3; i++ {
					if got := answer(b, sessionView); got != fresh {
						t.Errorf("client B sees %q after client A left, want %q", got, fresh)
					}
				}
				nc := txConnect(t, g)
				if got := answer(nc, sessionView); got != fresh {
					t.Errorf("a new client sees %q after client A left, want %q", got, fresh)
				}
			})
		}
	}
}

// TestTxIsolationTrackedSettings: settings the gateway carries follow the
// client to every backend, and never reach another client.
func TestTxIsolationTrackedSettings(t *testing.T) {
	g := txGatewayWith(t, 1, nil)
	a := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM, "options='-c search_path=startup_path'")
	direct := directConnect(t, "options='-c search_path=startup_path'")
	b := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM, "timezone=Asia/Tokyo")
	directB := directConnect(t, "timezone=Asia/Tokyo")
	steps := []string{
		"set search_path = x -- a comment that must not swallow what follows",
		"set application_name = 'a;b' /* block */",
		"show search_path", "show application_name",
		"reset search_path", "show search_path",
		"set search_path = y", "discard all", "show search_path", "show application_name",
		"set time zone 'Europe/Paris'", "show timezone",
		"reset all", "show search_path", "show timezone",
		"begin", "set search_path = in_block", "commit", "show search_path",
		"begin", "set search_path = rolled_back", "rollback", "show search_path",
		"begin", "set search_path = failed", "select 1/0", "commit", "show search_path",
		"set myapp.tenant = 'acme'", "show myapp.tenant",
	}
	inBlock := false
	for _, sql := range steps {
		sameAsDirect(t, a, direct, sql)
		switch sql {
		case "begin":
			inBlock = true
		case "commit", "rollback":
			inBlock = false
		}
		if inBlock {
			continue // A holds the only backend until its block ends
		}
		// B, on the same single backend, keeps its own start-up TimeZone
		// and never sees A's settings.
		sameAsDirect(t, b, directB, "show timezone", "show search_path", "show application_name")
	}
	if g.srv.Stats().PinnedClients != 0 {
		t.Errorf("tracked settings pinned a client: %+v", g.srv.Stats().Pins)
	}
}

// TestTxIsolationStatements covers statements: names nobody can reach,
// unnamed statements that never cross clients, and DEALLOCATE / DISCARD
// ALL that act on the client's own view.
func TestTxIsolationStatements(t *testing.T) {
	t.Run("a client cannot replace another's statement", func(t *testing.T) {
		for _, size := range []int{1, 2} {
			g := txGatewayWith(t, size, nil)
			ctx := context.Background()
			b := pgxConnect(t, g, "")
			var got int
			if err := b.QueryRow(ctx, "select $1::int * 2", 21).Scan(&got); err != nil || got != 42 {
				t.Fatalf("first run: %d %v", got, err)
			}
			// The gateway's names can be read, though not computed: A
			// reads it on the backend B used (the only one of pool 1).
			a := txConnect(t, g)
			name := answer(a, "select name from pg_prepared_statements where statement = 'select $1::int * 2'")
			answer(a, "deallocate "+name)
			answer(a, "prepare "+name+" (int) as select 666000 + $1")
			if size == 1 {
				a.Close(ctx) // A holds the only backend now
			}
			for i := 0; i < 3; i++ {
				if err := b.QueryRow(ctx, "select $1::int * 2", 21).Scan(&got); err != nil || got != 42 {
					t.Errorf("pool %d: after A forged statement %q, B got %d %v, want 42", size, name, got, err)
				}
			}
		}
	})
	t.Run("statement names depend on a per-gateway key", func(t *testing.T) {
		g1, g2 := txGatewayWith(t, 1, nil), txGatewayWith(t, 1, nil)
		names := map[string]bool{}
		for _, g := range []*gateway{g1, g2} {
			c := pgxConnect(t, g, "")
			var v int
			if err := c.QueryRow(context.Background(), "select $1::int + 1", 1).Scan(&v); err != nil {
				t.Fatal(err)
			}
			names[answer(txConnect(t, g), "select name from pg_prepared_statements where statement = 'select $1::int + 1'")] = true
		}
		if len(names) != 2 {
			t.Errorf("two gateway processes named the same statement alike: %v", names)
		}
	})
	t.Run("unnamed statements never cross clients", func(t *testing.T) {
		g := txGatewayWith(t, 1, nil)
		a, b := rawGateway(t, g), rawGateway(t, g)
		da, db := rawDirect(t), rawDirect(t)
		parse := func(who string) []pgproto3.FrontendMessage {
			return []pgproto3.FrontendMessage{txParse("", "select '"+who+"-secret:' || $1::text"), txDescribe(""), txSync()}
		}
		exec := []pgproto3.FrontendMessage{txBind("", "x"), txExecute(), txSync()}
		steps := []struct {
			gw, direct *rawConn
			msgs       []pgproto3.FrontendMessage
		}{
			{a, da, parse("A")}, {b, db, parse("B")}, {a, da, exec}, {b, db, exec},
			{a, da, []pgproto3.FrontendMessage{txQuery("select 1")}}, {b, db, exec}, {a, da, exec},
			{a, da, []pgproto3.FrontendMessage{txClose(""), txSync()}}, {a, da, exec}, {b, db, exec},
		}
		for i, s := range steps {
			got, want := strings.Join(s.gw.run(t, s.msgs...), "; "), strings.Join(s.direct.run(t, s.msgs...), "; ")
			if got != want {
				t.Errorf("step %d %s:\n gateway %s\n direct  %s", i, batchString(s.msgs), got, want)
			}
		}
	})
	t.Run("describe_exec drivers under load", func(t *testing.T) {
		g := txGatewayWith(t, 2, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for _, who := range []string{"A", "B", "C", "D"} {
			c := pgxConnect(t, g, "default_query_exec_mode=describe_exec")
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 150; i++ {
					var got string
					want := fmt.Sprintf("%s-secret:%d", who, i)
					if err := c.QueryRow(ctx, "select '"+who+"-secret:' || $1::text", fmt.Sprint(i)).Scan(&got); err != nil || got != want {
						errs <- fmt.Errorf("client %s got %q (%v), want %q", who, got, err, want)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
	t.Run("deallocate all and discard all act on the client's view", func(t *testing.T) {
		g := txGatewayWith(t, 1, nil)
		ctx := context.Background()
		b := pgxConnect(t, g, "")
		var got int
		for _, sql := range []string{"DEALLOCATE ALL", "deallocate /* c */ prepare all", "DISCARD ALL"} {
			if err := b.QueryRow(ctx, "select $1::int * 3", 3).Scan(&got); err != nil || got != 9 {
				t.Fatalf("before %s: %d %v", sql, got, err)
			}
			a := txConnect(t, g)
			if v := answer(a, sql); strings.HasPrefix(v, "ERROR") {
				t.Fatalf("%s: %s", sql, v)
			}
			if err := b.QueryRow(ctx, "select $1::int * 3", 3).Scan(&got); err != nil || got != 9 {
				t.Errorf("after another client's %s: %d %v", sql, got, err)
			}
			newcomer := pgxConnect(t, g, "")
			if err := newcomer.QueryRow(ctx, "select $1::int * 3", 3).Scan(&got); err != nil || got != 9 {
				t.Errorf("a new client after another's %s: %d %v", sql, got, err)
			}
		}
		// The client's own statements go, as on a direct connection.
		a, da := rawGateway(t, g), rawDirect(t)
		for _, batch := range [][]pgproto3.FrontendMessage{
			{txParse("mine", "select 5"), txSync()},
			{txQuery("deallocate all")},
			{txBind("mine"), txExecute(), txSync()},
			{txParse("mine2", "select 6"), txSync()},
			{txQuery("deallocate mine2")},
			{txBind("mine2"), txExecute(), txSync()},
			{txParse("mine3", "select 7"), txSync()},
			{txQuery("discard all")},
			{txBind("mine3"), txExecute(), txSync()},
		} {
			got, want := strings.Join(a.run(t, batch...), "; "), strings.Join(da.run(t, batch...), "; ")
			if got != want {
				t.Errorf("%s:\n gateway %s\n direct  %s", batchString(batch), got, want)
			}
		}
	})
}

// TestTxExtendedProtocolPins: what the extended protocol runs cannot be
// replayed by the gateway, so SET and DISCARD ALL through it pin.
func TestTxExtendedProtocolPins(t *testing.T) {
	g := txGatewayWith(t, 2, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct{ sql, reason, check string }{
		{"set search_path = ext_evil", "set", "show search_path"},
		{"discard all", "discard", "select 1"},
	} {
		a, direct := txConnect(t, g), directConnect(t)
		for _, c := range []*pgconn.PgConn{a, direct} {
			if _, err := c.ExecParams(ctx, tc.sql, nil, nil, nil, nil).Close(); err != nil {
				t.Fatalf("%s: %v", tc.sql, err)
			}
		}
		sameAsDirect(t, a, direct, tc.check)
		b := txConnect(t, g)
		if got := answer(b, "show search_path"); got != `"$user", public` {
			t.Errorf("after another client's %s, B sees search_path %q", tc.sql, got)
		}
		if n := g.srv.Stats().Pins[tc.reason]; n != 1 {
			t.Errorf("%s: pins by reason %s = %d, want 1", tc.sql, tc.reason, n)
		}
		a.Close(ctx)
		b.Close(ctx)
	}
}

// TestTxListenNotifyPinned: LISTEN works in transaction mode by pinning, and
// a notification never reaches a client that did not listen.
func TestTxListenNotifyPinned(t *testing.T) {
	g := txGatewayWith(t, 2, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := make(chan string, 10)
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable",
		g.port, pgtest.UserSCRAM, pgtest.PassSCRAM, pgtest.Database))
	if err != nil {
		t.Fatal(err)
	}
	cfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) { got <- n.Channel + ":" + n.Payload }
	listener, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(ctx)
	strayCfg := cfg.Copy()
	stray := make(chan string, 10)
	strayCfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) { stray <- n.Channel }
	bystander, err := pgconn.ConnectConfig(ctx, strayCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer bystander.Close(ctx)
	if v := answer(listener, "listen qc_chan"); strings.HasPrefix(v, "ERROR") {
		t.Fatalf("LISTEN: %s", v)
	}
	// A DO-block LISTEN the gateway cannot see is pinned too.
	if v := answer(bystander, "select 1"); v != "1" {
		t.Fatal(v)
	}
	notifier := txConnect(t, g)
	answer(notifier, "notify qc_chan, 'hello'")
	answer(listener, "select 1")
	if err := listener.WaitForNotification(ctx); err != nil && len(got) == 0 {
		t.Fatalf("waiting for the notification: %v", err)
	}
	select {
	case n := <-got:
		if n != "qc_chan:hello" {
			t.Errorf("notification %q", n)
		}
	default:
		t.Errorf("the listening client got no notification")
	}
	for i := 0; i < 5; i++ {
		answer(bystander, "select 1")
	}
	if len(stray) != 0 {
		t.Errorf("a client that never listened got %d notifications", len(stray))
	}
	if got := g.srv.Stats().Pins["listen"]; got != 1 {
		t.Errorf("pins by reason listen = %d, want 1", got)
	}
	var pinned string
	for _, ci := range g.srv.Clients() {
		if ci.Pinned != "" {
			pinned += ci.Pinned
		}
	}
	if pinned != "listen" {
		t.Errorf("/v1/clients shows pinned %q, want listen", pinned)
	}
}

// TestTxPinningRefuse: with GATEKEEPER_TX_PINNING=refuse, what would pin
// fails with 0A000 naming the setting, and the client goes on.
func TestTxPinningRefuse(t *testing.T) {
	g := txGatewayWith(t, 1, func(w *wire.Config) { w.TxPinning = wire.TxPinningRefuse })
	a := txConnect(t, g)
	for _, sql := range []string{"set role qc_nobody", "create temp table qc_r(a int)", "select pg_advisory_lock(1)", "listen x", "prepare p as select 1"} {
		_, err := testkit.Query(context.Background(), a, sql)
		if code := testkit.SQLState(err); code != "0A000" || !strings.Contains(err.Error(), "GATEKEEPER_TX_PINNING") {
			t.Errorf("%s: %v, want 0A000 naming GATEKEEPER_TX_PINNING", sql, err)
		}
		if v := answer(a, "select 1"); v != "1" {
			t.Errorf("after the refused %s: %s", sql, v)
		}
	}
	if v := answer(a, "select count(*) from pg_class where relnamespace = pg_my_temp_schema()"); v != "0" {
		t.Errorf("a refused statement ran: %s temp tables", v)
	}
}

// TestTxClaimedLengthCostsNothing: clients announcing huge messages and
// sending nothing cost memory only for what they send.
func TestTxClaimedLengthCostsNothing(t *testing.T) {
	g := txGatewayWith(t, 2, nil)
	const clients = 200
	conns := make([]*rawConn, 0, clients)
	for i := 0; i < clients; i++ {
		conns = append(conns, rawGateway(t, g))
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	header := []byte{'Q', 0x0f, 0xff, 0xff, 0xf0} // 256 MiB, less a little
	for _, c := range conns {
		if _, err := c.conn.Write(header); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	// Each client may hold one 32 KiB read buffer; 64 MiB leaves room for
	// the test's own allocations and still fails at two claimed messages.
	if grown > 64<<20 {
		t.Errorf("%d clients claiming 256 MiB each grew the heap by %d MiB", clients, grown>>20)
	}
	t.Logf("heap grew by %d KiB for %d clients", grown>>10, clients)
	// And a real big message still goes through.
	c := txConnect(t, g)
	big := strings.Repeat("x", 3<<20)
	if v := answer(c, "select length('"+big+"')"); v != fmt.Sprint(len(big)) {
		t.Errorf("a 3 MiB query: %q", v)
	}
}

// TestTxIsolationRandomized interleaves session-changing statements across
// clients sharing two backends, with a model of what each client's session
// holds, and checks after every step that each client sees its own
// session and nothing else. The seed is logged for reproduction.
func TestTxIsolationRandomized(t *testing.T) {
	g := txGatewayWith(t, 2, nil)
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	ctx := context.Background()

	type client struct {
		name  string
		conn  *pgx.Conn
		app   string // expected application_name
		path  string // expected search_path
		stmts map[string]string
	}
	fresh := func(i int) *client {
		c := pgxConnect(t, g, "")
		return &client{name: fmt.Sprintf("c%d", i), conn: c, app: "", path: `"$user", public`, stmts: map[string]string{}}
	}
	clients := []*client{fresh(0), fresh(1), fresh(2)}
	next := 3
	steps := 300
	if testing.Short() {
		steps = 60
	}
	for step := 0; step < steps; step++ {
		i := rng.Intn(len(clients))
		c := clients[i]
		v := fmt.Sprintf("%s_%d", c.name, step)
		exec := func(sql string) {
			if _, err := c.conn.Exec(ctx, sql); err != nil {
				t.Fatalf("step %d %s: %s: %v", step, c.name, sql, err)
			}
		}
		var did string
		switch rng.Intn(9) {
		case 0:
			did = "set application_name"
			exec("set application_name = '" + v + "'")
			c.app = v
		case 1:
			did = "set search_path in a committed block"
			tx, err := c.conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "set search_path = "+v); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			c.path = v
		case 2:
			did = "set search_path in a rolled back block"
			tx, err := c.conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "set search_path = "+v); err != nil {
				t.Fatal(err)
			}
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
		case 3:
			did = "reset all"
			exec("reset all")
			c.app, c.path = "", `"$user", public`
		case 4:
			did = "prepare"
			sql := fmt.Sprintf("select '%s' || $1::text", v)
			var got string
			if err := c.conn.QueryRow(ctx, sql, "!").Scan(&got); err != nil || got != v+"!" {
				t.Fatalf("step %d %s: %s = %q %v", step, c.name, sql, got, err)
			}
			c.stmts[sql] = v + "!"
		case 5:
			did = "deallocate all"
			// pgx runs DEALLOCATE ALL and forgets its own cache.
			if err := c.conn.DeallocateAll(ctx); err != nil {
				t.Fatalf("step %d %s: deallocate all: %v", step, c.name, err)
			}
		case 6:
			did = "discard all"
			exec("discard all")
			if err := c.conn.DeallocateAll(ctx); err != nil {
				t.Fatalf("step %d %s: deallocate all: %v", step, c.name, err)
			}
			c.app, c.path = "", `"$user", public`
		case 7:
			did = "pin with a temp table, then leave"
			exec("create temp table qc_rand(a text)")
			exec("insert into qc_rand values ('" + v + "')")
			var got string
			if err := c.conn.QueryRow(ctx, "select a from qc_rand").Scan(&got); err != nil || got != v {
				t.Fatalf("step %d %s: temp table read %q %v", step, c.name, got, err)
			}
			c.conn.Close(ctx)
			clients[i] = fresh(next)
			next++
		case 8:
			did = "run prepared statements again"
		}
		// Every client sees its own session, nothing of the others'.
		for _, o := range clients {
			var app, path string
			var temps int
			if err := o.conn.QueryRow(ctx, "select current_setting('application_name'), current_setting('search_path'), (select count(*) from pg_class where relnamespace = pg_my_temp_schema())").Scan(&app, &path, &temps); err != nil {
				t.Fatalf("step %d (%s %s): %s: %v", step, c.name, did, o.name, err)
			}
			if app != o.app || path != o.path || temps != 0 {
				t.Fatalf("step %d (%s %s): %s sees application_name %q, search_path %q, %d temp tables; want %q, %q, 0",
					step, c.name, did, o.name, app, path, temps, o.app, o.path)
			}
			for sql, want := range o.stmts {
				var got string
				if err := o.conn.QueryRow(ctx, sql, "!").Scan(&got); err != nil || got != want {
					t.Fatalf("step %d (%s %s): %s ran %s: %q %v, want %q", step, c.name, did, o.name, sql, got, err, want)
				}
			}
		}
	}
}

// TestTxPinnedClientClosedBetweenTransactions: at shutdown, a pinned
// client that is between transactions is closed at once, as an unpinned
// one is, not kept until the wait for answers in flight runs out; and a
// request in flight on another session still gets its answer first.
func TestTxPinnedClientClosedBetweenTransactions(t *testing.T) {
	g := txGatewayWith(t, 2, nil)
	a := rawGateway(t, g)
	a.run(t, txQuery("create temp table qc_pin_shutdown(a int)"))
	if g.srv.Stats().PinnedClients != 1 {
		t.Fatalf("the temp table did not pin the client")
	}
	b := txConnect(t, g)
	bDone := make(chan error, 1)
	var bAt time.Time
	go func() {
		_, err := testkit.Query(context.Background(), b, "select pg_sleep(1.5)")
		bAt = time.Now()
		bDone <- err
	}()
	time.Sleep(300 * time.Millisecond) // B's query is running
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		_ = g.srv.Shutdown(ctx)
	}()
	_ = a.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	msg, err := a.fe.Receive()
	aAt := time.Now()
	er, ok := msg.(*pgproto3.ErrorResponse)
	if err != nil || !ok || er.Code != "57P01" {
		t.Fatalf("the pinned client got %#v, %v; want 57P01", msg, err)
	}
	if err := <-bDone; err != nil {
		t.Fatalf("the query in flight on another session: %v, want its answer before the shutdown closes it", err)
	}
	if !aAt.Before(bAt) {
		t.Errorf("the idle pinned client was closed after the other session's query finished: kept as if busy")
	}
}

// TestTxResetReadBackAtOnce: RESET of a start-up setting shows the
// start-up value at once, inside a transaction block and for a pinned
// client (which never changes backends), as on a direct connection.
func TestTxResetReadBackAtOnce(t *testing.T) {
	g := txGatewayWith(t, 2, nil)
	opts := "options='-c search_path=startup_path -c application_name=startup_app'"
	for _, tc := range []struct {
		name  string
		stmts []string
	}{
		{"in a block", []string{"begin", "set search_path = x", "reset search_path", "show search_path", "reset all", "show application_name", "commit", "show search_path"}},
		{"pinned", []string{"create temp table qc_reset_pin(a int)", "set search_path = x", "reset search_path", "show search_path",
			"set application_name = y", "reset all", "show application_name", "show search_path", "discard all", "show search_path"}},
		{"pipelined", []string{"set search_path = x; select 1", "reset search_path", "show search_path"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM, opts)
			direct := directConnect(t, opts)
			sameAsDirect(t, a, direct, tc.stmts...)
		})
	}
	// Raw protocol: the gateway's own query leaves no trace in what the
	// client receives.
	a := rawGatewayParams(t, g, map[string]string{"options": "-c search_path=startup_path"})
	da := rawDirect(t, "options='-c search_path=startup_path'")
	batch := []pgproto3.FrontendMessage{txQuery("begin"), txQuery("set search_path = x"), txQuery("reset all"), txQuery("show search_path"),
		txQuery("reset search_path"), txQuery("commit"), txQuery("show search_path")}
	if got, want := strings.Join(a.run(t, batch...), "; "), strings.Join(da.run(t, batch...), "; "); got != want {
		t.Errorf("pipelined RESET ALL:\n gateway %s\n direct  %s", got, want)
	}
}
