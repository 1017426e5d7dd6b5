package wire_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
)

// A client that closes its connection while its INSERT waits for the one
// backend of a full pool never has that INSERT run, in both modes: whether
// the pool's wait check notices first (the client leaves the queue at once)
// or a backend frees before it does (the check when the wait ends). It
// leaves the way libpq does (Terminate, then close) or with a reset. A
// client that stays, queued behind it, has its INSERT run: had the
// departed one's been sent, it would have run first.
func TestRequestOfClientThatLeftWhileWaitingNeverRuns(t *testing.T) {
	c := pgtest.Require(t)
	direct := directConnect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := testkit.Query(ctx, direct, "drop table if exists left_waiting; create table left_waiting (who text)"); err != nil {
		t.Fatal(err)
	}
	waiting := func(g *gateway, want int64) func() (bool, string) {
		return func() (bool, string) {
			st, _ := userStats(g, pgtest.UserSCRAM)
			return st.Waiting == want, fmt.Sprintf("%d waiting", st.Waiting)
		}
	}
	for _, mode := range fltModes {
		for _, tc := range []struct {
			name          string
			reset         bool // leave with a TCP reset instead of Terminate and FIN
			freeAtOnce    bool // free the backend before the wait check can run
			noticedInWait bool // expect the client out of the queue before any backend frees
		}{
			{name: "noticed-while-waiting", noticedInWait: true},
			{name: "reset-noticed-while-waiting", reset: true, noticedInWait: true},
			{name: "backend-frees-first", freeAtOnce: true},
			{name: "reset-backend-frees-first", reset: true, freeAtOnce: true},
		} {
			t.Run(fmt.Sprintf("%s/%s", mode, tc.name), func(t *testing.T) {
				g := oneBackendGateway(t, c, mode)
				who := fmt.Sprintf("%s/%s", mode, tc.name)
				leaver := rawGateway(t, g)
				control := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
				holder := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
				// The holder takes the backend: for its session, or for
				// the transaction it leaves open.
				if _, err := testkit.Query(ctx, holder, "begin; select 1"); err != nil {
					t.Fatal(err)
				}

				leaver.fe.Send(&pgproto3.Query{String: fmt.Sprintf("insert into left_waiting values ('%s left')", who)})
				if err := leaver.fe.Flush(); err != nil {
					t.Fatal(err)
				}
				if !waitFor(t, 10*time.Second, "the departing client to wait for the backend", waiting(g, 1)) {
					return
				}
				if tc.reset {
					_ = leaver.conn.(*net.TCPConn).SetLinger(0)
				} else {
					leaver.fe.Send(&pgproto3.Terminate{})
					_ = leaver.fe.Flush()
				}
				leaver.conn.Close()
				if tc.freeAtOnce {
					holder.Close(ctx)
				} else if !waitFor(t, 5*time.Second, "the departed client to leave the queue", waiting(g, 0)) {
					return
				}

				done := make(chan error, 1)
				go func() {
					_, err := testkit.Query(ctx, control, fmt.Sprintf("insert into left_waiting values ('%s stayed')", who))
					done <- err
				}()
				if !tc.freeAtOnce {
					waitFor(t, 10*time.Second, "the staying client to wait for the backend", waiting(g, 1))
					holder.Close(ctx)
				}
				if err := <-done; err != nil {
					t.Fatalf("the staying client's insert: %v", err)
				}
				got, err := testkit.Query(ctx, direct, fmt.Sprintf(
					"select string_agg(who, ', ' order by who) from left_waiting where who like '%s %%'", who))
				if err != nil {
					t.Fatal(err)
				}
				if want := who + " stayed"; got != want {
					t.Errorf("rows inserted through the gateway: %q; want only %q (the departed client's request must not run)", got, want)
				}
			})
		}
	}
}

// A request that did not have to queue is sent even when its client
// closes right after sending it without waiting for the answer (libpq's
// PQsendQuery then PQfinish), as a direct connection would run it: here
// the pool has room but no idle connection, so the request waits for a
// dial, which is not a queue.
func TestRequestSentThenClosedWithoutQueueingRuns(t *testing.T) {
	c := pgtest.Require(t)
	direct := directConnect(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := testkit.Query(ctx, direct, "drop table if exists sent_then_closed; create table sent_then_closed (who text)"); err != nil {
		t.Fatal(err)
	}
	for _, mode := range fltModes {
		t.Run(string(mode), func(t *testing.T) {
			pcfg := testPoolConfig()
			pcfg.Size = 2
			g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), pcfg, fltMode(mode))
			sender := rawGateway(t, g)
			holder := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			if _, err := testkit.Query(ctx, holder, "begin; select 1"); err != nil {
				t.Fatal(err)
			}
			if !waitFor(t, 5*time.Second, "no idle connection, room for one more", func() (bool, string) {
				st, _ := userStats(g, pgtest.UserSCRAM)
				return st.Idle == 0 && st.Total == 1, fmt.Sprintf("%d idle of %d", st.Idle, st.Total)
			}) {
				return
			}
			who := string(mode)
			sender.fe.Send(&pgproto3.Query{String: fmt.Sprintf("insert into sent_then_closed values ('%s')", who)})
			sender.fe.Send(&pgproto3.Terminate{})
			if err := sender.fe.Flush(); err != nil {
				t.Fatal(err)
			}
			sender.conn.Close()
			waitFor(t, 10*time.Second, "the request to run", func() (bool, string) {
				n, err := testkit.Query(ctx, direct, fmt.Sprintf("select count(*) from sent_then_closed where who = '%s'", who))
				return n == "1", fmt.Sprintf("%s rows, %v", n, err)
			})
		})
	}
}

// A login that waits for a backend of a full pool, for its password to be
// checked (the pool's credential cache expired) or its start-up settings,
// leaves the queue when its client gives up (a psql killed while it
// connects): nothing is asked of the server for it.
func TestLoginThatLeftWhileWaitingLeavesTheQueue(t *testing.T) {
	c := pgtest.Require(t)
	for _, mode := range fltModes {
		for _, check := range []string{"settings", "credential"} {
			t.Run(fmt.Sprintf("%s/%s", mode, check), func(t *testing.T) {
				pcfg := testPoolConfig()
				pcfg.Size = 1
				pcfg.AcquireTimeout = time.Minute
				if check == "credential" {
					pcfg.AuthCacheTTL = 200 * time.Millisecond
				}
				g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), pcfg, fltMode(mode))
				holder := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if _, err := testkit.Query(ctx, holder, "begin; select 1"); err != nil {
					t.Fatal(err)
				}
				params := map[string]string{"user": pgtest.UserSCRAM, "database": pgtest.Database}
				if check == "settings" {
					params["application_name"] = "left-during-login-" + string(mode)
				} else {
					time.Sleep(2 * pcfg.AuthCacheTTL) // the next login is checked with the server
				}
				conn, err := net.DialTimeout("tcp", g.addr, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				fe := pgproto3.NewFrontend(conn, conn)
				fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params})
				if err := fe.Flush(); err != nil {
					t.Fatal(err)
				}
				_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				if msg, err := fe.Receive(); err != nil {
					t.Fatal(err)
				} else if _, ok := msg.(*pgproto3.AuthenticationCleartextPassword); !ok {
					t.Fatalf("start-up answered %T, want a password request", msg)
				}
				fe.Send(&pgproto3.PasswordMessage{Password: pgtest.PassSCRAM})
				if err := fe.Flush(); err != nil {
					t.Fatal(err)
				}
				waiting := func(want int64) func() (bool, string) {
					return func() (bool, string) {
						st, _ := userStats(g, pgtest.UserSCRAM)
						return st.Waiting == want, fmt.Sprintf("%d waiting", st.Waiting)
					}
				}
				if !waitFor(t, 10*time.Second, "the login to wait for the backend", waiting(1)) {
					return
				}
				conn.Close()
				waitFor(t, 5*time.Second, "the departed login to leave the queue", waiting(0))
				// The pool goes on serving with the credential it had.
				holder.Close(ctx)
				next := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
				if got, err := testkit.Query(ctx, next, "select 'served'"); err != nil || got != "served" {
					t.Fatalf("the next client: %q, %v", got, err)
				}
			})
		}
	}
}
