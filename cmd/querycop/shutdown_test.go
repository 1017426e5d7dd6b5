package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
	"github.com/querycop/querycop/wire"
)

// queryBytes is a simple-protocol Query message.
func queryBytes(sql string) []byte {
	b := []byte{'Q', 0, 0, 0, 0}
	b = append(b, sql...)
	b = append(b, 0)
	binary.BigEndian.PutUint32(b[1:], uint32(len(b)-1))
	return b
}

// want57P01 checks that c's next query fails with the shutdown FATAL.
func want57P01(t *testing.T, name string, c *pgconn.PgConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := testkit.Query(ctx, c, "select 1")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" || pgErr.Severity != "FATAL" {
		t.Errorf("%s: next query after shutdown: %v, want FATAL 57P01", name, err)
	}
}

// SIGTERM while clients have a large result in flight and do not read it:
// the relay is blocked writing to each of them. The process still exits
// within GATEKEEPER_SHUTDOWN_TIMEOUT plus wire.ShutdownBound, every other
// session gets its 57P01, and a query running when the timeout expires
// gets its answer first.
func TestSIGTERMWithClientNotReading(t *testing.T) {
	c := pgtest.Require(t)
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) {
			const timeout = time.Second
			p := startQuerycop(t, c, "GATEKEEPER_SHUTDOWN_TIMEOUT="+timeout.String(), "GATEKEEPER_POOL_MODE="+mode)
			idle := p.mustConnect(t)
			mustExec(t, idle, "select 1")
			inTx := p.mustConnect(t)
			mustExec(t, inTx, "begin")
			slow := p.mustConnect(t)
			mustExec(t, slow, "select 1")

			// Several: each is closed on its own, so they must not add up.
			for range 6 {
				stuck := p.mustConnect(t)
				hj, err := stuck.Hijack()
				if err != nil {
					t.Fatal(err)
				}
				defer hj.Conn.Close()
				if _, err := hj.Conn.Write(queryBytes("select repeat('x', 1000000) from generate_series(1, 200)")); err != nil {
					t.Fatal(err)
				}
			}
			// Let the result fill the socket buffers: the relay blocks.
			time.Sleep(500 * time.Millisecond)

			// Ends after the shutdown timeout, before the answer wait does.
			slowDone := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				v, err := testkit.Query(ctx, slow, "select pg_sleep(1.5)::text || 'answered'")
				if err == nil && v != "answered" {
					err = fmt.Errorf("answer %q", v)
				}
				slowDone <- err
			}()
			time.Sleep(100 * time.Millisecond)

			sent := p.signal(t, syscall.SIGTERM)
			code := p.waitExit(t, timeout+wire.ShutdownBound+5*time.Second)
			if took, bound := time.Since(sent), timeout+wire.ShutdownBound; took > bound {
				t.Errorf("exited %s after SIGTERM, more than GATEKEEPER_SHUTDOWN_TIMEOUT (%s) + %s", took, timeout, wire.ShutdownBound)
			}
			if code != 0 {
				t.Errorf("exit status %d, want 0", code)
			}
			if err := <-slowDone; err != nil {
				t.Errorf("a query running when the shutdown timeout expired: %v, want its answer", err)
			}
			want57P01(t, "idle session", idle)
			want57P01(t, "session inside a transaction", inTx)
			want57P01(t, "session whose query was answered during shutdown", slow)
		})
	}
}
