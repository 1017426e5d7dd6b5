package wire_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

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
