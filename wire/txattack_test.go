package wire_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/wire"
)

// Attacks on transaction mode's isolation: statements that change the
// session in ways the gateway has to notice, by forms its lexer or its
// tracking of transaction blocks could miss. Each case runs on a pool of
// one backend: client A runs the statements and leaves, and the next
// clients on that backend must see PostgreSQL's defaults.

// attackView is sessionView with the settings these attacks aim at.
const attackView = sessionView + ` || '|' || current_setting('default_transaction_read_only') || '|' || current_setting('work_mem')`

func TestTxAttackSessionLeaks(t *testing.T) {
	cases := []struct {
		name  string
		stmts []string
		opts  string // A's connection parameters
	}{
		{"commit in the middle of a multi-statement query", []string{"begin", "set search_path = evil_mid", "commit; select 1"}, ""},
		{"rollback then commit in one query", []string{"begin", "set work_mem = '7MB'", "rollback; begin; commit"}, ""},
		{"commit and a new block in one query", []string{"begin", "set search_path = evil_chain", "commit; begin", "rollback"}, ""},
		{"explain analyze create temp table", []string{"explain (analyze, costs off, timing off, summary off) create temp table qc_xtemp as select 1 as a"}, ""},
		{"search_path naming pg_temp in a string", []string{"set search_path = 'pg_temp', public", "create table qc_ptemp(a int)", "set search_path = public"}, ""},
		{"quoted pg_temp schema", []string{`create table "pg_temp".qc_qtemp(a int)`}, ""},
		{"quoted set_config", []string{`select "set_config"('search_path', 'evil_q', false)`}, ""},
		{"quoted advisory lock", []string{`select pg_catalog."pg_try_advisory_lock_shared"(13)`}, ""},
		{"update pg_settings", []string{"update pg_settings set setting = 'evil_u' where name = 'search_path'"}, ""},
		{"standard_conforming_strings off", []string{"set standard_conforming_strings = off", `select '\'' ; set search_path = evil_s ; select ''`}, ""},
		{"SJIS trail byte", []string{"set client_encoding = 'SJIS'", "select E'\x95\x5c' ; set search_path = evil_j ; select E'\x95\x5c'"}, ""},
		{"function setting default_transaction_read_only", []string{"create or replace function qc_ro13() returns text language sql as $$select set_config('default_transaction_read_only', 'on', false)$$", "select qc_ro13()"}, ""},
		{"unicode-escaped set_config", []string{`select U&"set\005fconfig"('search_path', 'evil_u1', false)`}, ""},
		{"unicode-escaped set_config with UESCAPE", []string{`select U&"set!005fconfig" UESCAPE '!' ('search_path', 'evil_u2', false)`}, ""},
		{"national string with standard_conforming_strings off", []string{"set standard_conforming_strings = off", `select N'\'' ; set search_path = evil_n ; select ''`}, ""},
		{"standard_conforming_strings off from the start", []string{`select '\'' ; set search_path = evil_o ; select ''`}, "options='-c standard_conforming_strings=off'"},
		{"SJIS from the start", []string{"select E'\x95\x5c' ; set search_path = evil_k ; select E'\x95\x5c'"}, "client_encoding=SJIS"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := txGatewayWith(t, 1, nil)
			b := txConnect(t, g)
			fresh := answer(b, attackView)
			a := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM, tc.opts)
			direct := directConnect(t, tc.opts)
			for _, sql := range tc.stmts {
				if ga, da := answer(a, sql), answer(direct, sql); ga != da {
					t.Errorf("%s: through the gateway %q, direct %q", sql, ga, da)
				}
			}
			sameAsDirect(t, a, direct, "show search_path", "show work_mem")
			a.Close(context.Background())
			if got := answer(b, attackView); got != fresh {
				t.Errorf("client B sees %q after client A left, want %q", got, fresh)
			}
		})
	}
}

// TestTxAttackPipelinedBlockEnds: the ends of transaction blocks sent in
// one pipeline, before the server answered the first of them.
func TestTxAttackPipelinedBlockEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		msgs []pgproto3.FrontendMessage
	}{
		{"two commits", []pgproto3.FrontendMessage{txQuery("begin"), txQuery("set search_path = evil_pipe"), txQuery("commit"), txQuery("commit")}},
		{"commit then a rolled back block", []pgproto3.FrontendMessage{txQuery("begin"), txQuery("set search_path = evil_pipe2"), txQuery("commit"), txQuery("begin"), txQuery("rollback")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := txGatewayWith(t, 1, nil)
			a := rawGateway(t, g)
			d := rawDirect(t)
			if got, want := strings.Join(a.run(t, tc.msgs...), "; "), strings.Join(d.run(t, tc.msgs...), "; "); got != want {
				t.Errorf("gateway %s\ndirect  %s", got, want)
			}
			show := []pgproto3.FrontendMessage{txQuery("show search_path")}
			if got, want := strings.Join(a.run(t, show...), "; "), strings.Join(d.run(t, show...), "; "); got != want {
				t.Errorf("afterwards: gateway %s\ndirect  %s", got, want)
			}
			a.conn.Close()
			b := txConnect(t, g)
			if got := answer(b, "show search_path"); got != `"$user", public` {
				t.Errorf("the next client sees search_path %q", got)
			}
		})
	}
}

// TestTxAttackNamedCommit: a COMMIT prepared as a named statement and run
// later, after a tracked SET in the block.
func TestTxAttackNamedCommit(t *testing.T) {
	g := txGatewayWith(t, 1, nil)
	a := rawGateway(t, g)
	d := rawDirect(t)
	for _, batch := range [][]pgproto3.FrontendMessage{
		{txParse("c", "commit"), txSync()},
		{txQuery("begin")},
		{txQuery("set search_path = evil_named")},
		{txBind("c"), txExecute(), txSync()},
		{txQuery("show search_path")},
	} {
		if got, want := strings.Join(a.run(t, batch...), "; "), strings.Join(d.run(t, batch...), "; "); got != want {
			t.Errorf("%s: gateway %s\ndirect  %s", batchString(batch), got, want)
		}
	}
	a.conn.Close()
	b := txConnect(t, g)
	if got := answer(b, "show search_path"); got != `"$user", public` {
		t.Errorf("the next client sees search_path %q", got)
	}
}

// TestTxAttackProtocolLevel: session state reached through protocol
// messages rather than SQL text: the fast-path FunctionCall, and a Close
// naming a statement the gateway made for another client.
func TestTxAttackProtocolLevel(t *testing.T) {
	t.Run("function call of set_config", func(t *testing.T) {
		g := txGatewayWith(t, 1, nil)
		a := rawGateway(t, g)
		if got := funcCall(t, a, setConfigOID, "search_path", "evil_fn", "false"); strings.Contains(got, "Error") {
			t.Fatalf("function call: %s", got)
		}
		if n := g.srv.Stats().Pins["function-call"]; n != 1 {
			t.Errorf("pins by reason function-call = %d, want 1", n)
		}
		got := strings.Join(a.run(t, txQuery("show search_path")), "; ")
		if !strings.Contains(got, "evil_fn") {
			t.Errorf("the caller's own search_path: %s", got)
		}
		a.conn.Close()
		b := txConnect(t, g)
		if got := answer(b, "show search_path"); got != `"$user", public` {
			t.Errorf("the next client sees search_path %q", got)
		}
	})
	t.Run("large-object calls do not pin", func(t *testing.T) {
		g := txGatewayWith(t, 1, nil)
		a := rawGateway(t, g)
		a.run(t, txQuery("begin"))
		got := funcCall(t, a, 957, "-1") // lo_creat(integer)
		oid := strings.TrimSuffix(strings.TrimPrefix(got, "FunctionCallResponse "), "; ReadyForQuery T")
		if !strings.HasPrefix(got, "FunctionCallResponse ") {
			t.Fatalf("lo_creat: %s", got)
		}
		if got := funcCall(t, a, 964, oid); !strings.HasPrefix(got, "FunctionCallResponse 1") { // lo_unlink(oid)
			t.Errorf("lo_unlink: %s", got)
		}
		a.run(t, txQuery("commit"))
		if n := g.srv.Stats().PinnedClients; n != 0 {
			t.Errorf("large-object calls pinned %d clients: %v", n, g.srv.Stats().Pins)
		}
	})
	t.Run("function call refused", func(t *testing.T) {
		g := txGatewayWith(t, 1, func(w *wire.Config) { w.TxPinning = wire.TxPinningRefuse })
		a := rawGateway(t, g)
		got := funcCall(t, a, setConfigOID, "search_path", "evil_fr", "false")
		if !strings.HasPrefix(got, "ErrorResponse 0A000") || !strings.Contains(got, "GATEKEEPER_TX_PINNING") || !strings.HasSuffix(got, "ReadyForQuery I") {
			t.Errorf("refused function call: %s", got)
		}
		if got := strings.Join(a.run(t, txQuery("show search_path")), "; "); strings.Contains(got, "evil_fr") {
			t.Errorf("after the refused call: %s", got)
		}
	})
	t.Run("close of another client's statement", func(t *testing.T) {
		g := txGatewayWith(t, 1, nil)
		ctx := context.Background()
		b := pgxConnect(t, g, "")
		var got int
		if err := b.QueryRow(ctx, "select $1::int * 2", 21).Scan(&got); err != nil || got != 42 {
			t.Fatalf("first run: %d %v", got, err)
		}
		a := rawGateway(t, g)
		rows := a.run(t, txQuery("select name from pg_prepared_statements where statement = 'select $1::int * 2'"))
		var name string
		for _, r := range rows {
			if strings.HasPrefix(r, "DataRow ") {
				name = strings.Trim(strings.TrimPrefix(r, "DataRow "), `"`)
			}
		}
		if name == "" {
			t.Fatalf("no gateway statement: %q", rows)
		}
		for _, batch := range [][]pgproto3.FrontendMessage{
			{txClose(name), txSync()},
			{txParse(name, "select 1"), txSync()},
			{txClose(name), txSync()},
		} {
			a.run(t, batch...)
			if err := b.QueryRow(ctx, "select $1::int * 2", 21).Scan(&got); err != nil || got != 42 {
				t.Errorf("after another client's %s: %d %v, want 42", batchString(batch), got, err)
			}
		}
	})
}

// setConfigOID is set_config(text, text, boolean), the same in every release.
const setConfigOID = 2078

// funcCall makes a fast-path call with text arguments and returns the
// transcript up to ReadyForQuery.
func funcCall(t *testing.T, rc *rawConn, oid uint32, args ...string) string {
	t.Helper()
	fc := &pgproto3.FunctionCall{Function: oid, ArgFormatCodes: []uint16{0}}
	for _, a := range args {
		fc.Arguments = append(fc.Arguments, []byte(a))
	}
	rc.fe.Send(fc)
	if err := rc.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var out []string
	for {
		msg, err := rc.fe.Receive()
		if err != nil {
			t.Fatalf("after %q: %v", out, err)
		}
		switch m := msg.(type) {
		case *pgproto3.FunctionCallResponse:
			out = append(out, "FunctionCallResponse "+string(m.Result))
		case *pgproto3.ParameterStatus:
		default:
			line, _ := describeMsg(msg)
			out = append(out, line)
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			return strings.Join(out, "; ")
		}
	}
}

// TestTxAttackSetToDefault: SET name TO DEFAULT is RESET name, which goes
// back to the client's start-up value, not the backend's.
func TestTxAttackSetToDefault(t *testing.T) {
	g := txGatewayWith(t, 1, nil)
	opts := "options='-c search_path=startup_path' timezone=Asia/Tokyo"
	a := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM, opts)
	d := directConnect(t, opts)
	sameAsDirect(t, a, d, "set search_path = x", "set search_path to default", "show search_path",
		"set search_path = y", "set search_path = default", "show search_path",
		"set time zone 'Europe/Paris'", "set time zone default", "show timezone",
		"set time zone 'Europe/Paris'", "set time zone local", "show timezone")
	b := txConnect(t, g)
	if got := answer(b, "show search_path"); got != `"$user", public` {
		t.Errorf("the next client sees search_path %q", got)
	}
}

// TestTxAttackHiddenListenNotPinnedClient: a LISTEN hidden from the
// gateway stays on the backend; a client later pinned there for another
// reason never listened and must not get its notifications.
func TestTxAttackHiddenListenNotPinnedClient(t *testing.T) {
	g := txGatewayWith(t, 1, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	x := txConnect(t, g)
	if v := answer(x, "do $$begin execute 'lis' || 'ten qc_hidden13'; end$$"); strings.HasPrefix(v, "ERROR") {
		t.Fatal(v)
	}
	x.Close(ctx)
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable",
		g.port, pgtest.UserSCRAM, pgtest.PassSCRAM, pgtest.Database))
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 10)
	cfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) { got <- n.Channel }
	p, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	if v := answer(p, "create temp table qc_pin13(a int)"); strings.HasPrefix(v, "ERROR") {
		t.Fatal(v)
	}
	answer(directConnect(t), "notify qc_hidden13, 'for X'")
	for i := 0; i < 3; i++ {
		answer(p, "select pg_sleep(0.05)")
	}
	if len(got) != 0 {
		t.Errorf("a client that never listened got %d notifications of an earlier client's LISTEN", len(got))
	}
}

// TestTxAttackResetReports: what the client is told of its settings after
// its own RESET matches a direct connection. A client started with
// standard_conforming_strings off that was told "on" after RESET ALL would
// escape strings wrongly (libpq does so from the report) while its session
// is off again from its next transaction.
func TestTxAttackResetReports(t *testing.T) {
	g := txGatewayWith(t, 1, nil)
	opts := "options='-c standard_conforming_strings=off' timezone=Asia/Tokyo"
	a := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM, opts)
	d := directConnect(t, opts)
	for _, sql := range []string{"select 1", "reset all", "select 2", "set time zone 'Europe/Paris'", "reset timezone",
		"set standard_conforming_strings = on", "set standard_conforming_strings to default", "select 3",
		"set time zone 'Europe/Paris'", "discard all", "select 4"} {
		sameAsDirect(t, a, d, sql)
		for _, p := range []string{"standard_conforming_strings", "TimeZone"} {
			if ga, da := a.ParameterStatus(p), d.ParameterStatus(p); ga != da {
				t.Errorf("after %s: the client is told %s = %q through the gateway, %q direct", sql, p, ga, da)
			}
		}
	}
	sameAsDirect(t, a, d, "show standard_conforming_strings", "show timezone")
}

// TestTxAttackClientEncodingReplay: a client's settings are applied again
// in the encoding it wrote them in. A LATIN1 client's application_name
// was replayed before its client_encoding, so the server read its bytes
// as UTF-8 and refused them, and the client was disconnected.
func TestTxAttackClientEncodingReplay(t *testing.T) {
	// Two backends: one that pins keeps one, and B takes the other.
	g := txGatewayWith(t, 2, nil)
	for _, tc := range []struct {
		opts  string
		steps []string
	}{
		{"client_encoding=LATIN1", []string{"set myapp.label = 'caf\xe9'"}},
		{"", []string{"set client_encoding = 'LATIN1'", "set myapp.label = 'caf\xe9'"}},
		{"", []string{"set myapp.label = 'caf\xc3\xa9'", "set client_encoding = 'LATIN1'"}},
	} {
		a := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM, tc.opts)
		d := directConnect(t, tc.opts)
		sameAsDirect(t, a, d, tc.steps...)
		b := txConnect(t, g)
		answer(b, "select 1") // the backend serves someone else in between
		sameAsDirect(t, a, d, "show myapp.label", "select 'd\xe9j\xe0'")
		a.Close(context.Background())
		if got := answer(b, "show client_encoding"); got != "UTF8" {
			t.Errorf("the next client's client_encoding: %q", got)
		}
	}
}
