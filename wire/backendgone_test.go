package wire_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
)

// When the server ends the backend a client is attached to (an
// administrator's pg_terminate_backend, an idle-in-transaction timeout),
// the client gets the server's FATAL and then the end of its connection,
// as on a direct connection, in both modes: also a client that, unlike
// pgx, waits for the server to close rather than closing itself (libpq,
// psql). The pool's place is free again for the next client.
func TestClientOfATerminatedBackendIsClosed(t *testing.T) {
	c := pgtest.Require(t)
	direct := directConnect(t)
	for _, mode := range fltModes {
		for _, when := range []string{"running", "idle-in-transaction"} {
			t.Run(fmt.Sprintf("%s/%s", mode, when), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				g := oneBackendGateway(t, c, mode)
				app := fmt.Sprintf("terminated-%s-%s", mode, when)
				rc := rawGatewayParams(t, g, map[string]string{"application_name": app})
				state := "active"
				if when == "running" {
					rc.fe.Send(&pgproto3.Query{String: "select pg_sleep(30)"})
					if err := rc.fe.Flush(); err != nil {
						t.Fatal(err)
					}
				} else {
					rc.run(t, &pgproto3.Query{String: "begin"})
					state = "idle in transaction"
				}
				var pid string
				waitFor(t, 10*time.Second, "the client's backend in pg_stat_activity", func() (bool, string) {
					pid, _ = testkit.Query(ctx, direct, fmt.Sprintf(
						"select pid from pg_stat_activity where application_name = '%s' and state = '%s'", app, state))
					return pid != "", "not there yet"
				})
				if pid == "" {
					return
				}
				if got, err := testkit.Query(ctx, direct, "select pg_terminate_backend("+pid+")"); err != nil || got != "t" {
					t.Fatalf("pg_terminate_backend: %q, %v", got, err)
				}

				_ = rc.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				var fatal *pgproto3.ErrorResponse
				var err error
				for {
					var msg pgproto3.BackendMessage
					if msg, err = rc.fe.Receive(); err != nil {
						break
					}
					if e, ok := msg.(*pgproto3.ErrorResponse); ok && e.Severity == "FATAL" {
						fatal = e
					}
				}
				if fatal == nil || fatal.Code != "57P01" {
					t.Errorf("before the end: FATAL %+v; want the server's 57P01", fatal)
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("the client's connection stayed open 10 s after its backend was terminated")
				}
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Logf("the connection ended with %v", err)
				}

				next := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
				if got, err := testkit.Query(ctx, next, "select 'served'"); err != nil || got != "served" {
					t.Fatalf("the next client on the pool of one: %q, %v", got, err)
				}
			})
		}
	}
}
