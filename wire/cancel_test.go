package wire_test

import (
	"context"
	"errors"
	mathrand "math/rand/v2"
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

// cancelModes are the pool modes whose waiting requests a cancel ends:
// both.
var cancelModes = fltModes

// saturate holds every backend of a pool of size n with pg_sleep until the
// test ends (the sleeps are cancelled then).
func saturate(t *testing.T, g *gateway, n int) {
	t.Helper()
	var wg sync.WaitGroup
	holders := make([]*pgconn.PgConn, n)
	for i := range n {
		holders[i] = g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			_, _ = testkit.Query(ctx, holders[i], "select pg_sleep(60)")
		})
	}
	t.Cleanup(func() {
		for _, h := range holders {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = h.CancelRequest(ctx)
			cancel()
		}
		wg.Wait()
	})
	// Every backend is taken once the pool has no idle one.
	for i := 0; i < 500; i++ {
		if st, _ := userStats(g, pgtest.UserSCRAM); st.InUse >= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the pool did not fill up with %d sleeping clients", n)
}

// oneBackendGateway is a gateway in mode with a pool of one backend, whose
// waiting clients wait a minute rather than time out during a test.
func oneBackendGateway(t *testing.T, c *pgtest.Cluster, mode wire.PoolMode) *gateway {
	t.Helper()
	pcfg := testPoolConfig()
	pcfg.Size = 1
	pcfg.AcquireTimeout = time.Minute
	return startPooledGateway(t, backendConfig(c, backend.TLSDisable), pcfg, fltMode(mode))
}

// queryThenCancel sends sql on c, cancels it after delay, and returns the
// query's error (nil: it was answered).
func queryThenCancel(t *testing.T, c *pgconn.PgConn, sql string, delay time.Duration) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type result struct {
		v   string
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := testkit.Query(ctx, c, sql)
		done <- result{v, err}
	}()
	time.Sleep(delay)
	if err := c.CancelRequest(ctx); err != nil {
		t.Fatalf("CancelRequest: %v", err)
	}
	r := <-done
	return r.v, r.err
}

func isCanceled(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "57014" && pgErr.Severity == "ERROR"
}

// A query cancelled while it waits for a backend of a full pool ends at
// once with 57014, as on a direct connection, instead of running when the
// pool frees up; the session goes on.
func TestCancelWhileWaitingForBackend(t *testing.T) {
	c := pgtest.Require(t)
	for _, mode := range cancelModes {
		t.Run(string(mode), func(t *testing.T) {
			g := oneBackendGateway(t, c, mode)
			client := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			saturate(t, g, 1)
			v, err := queryThenCancel(t, client, "select 'ran'", 10*time.Millisecond)
			if !isCanceled(err) {
				t.Fatalf("query cancelled while waiting for a backend: %q, %v; want ERROR 57014", v, err)
			}
			// Extended protocol too (a prepared statement's execution).
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := client.ExecParams(ctx, "select $1::text", [][]byte{[]byte("ran")}, nil, nil, nil).Close()
				done <- err
			}()
			time.Sleep(10 * time.Millisecond)
			if err := client.CancelRequest(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-done; !isCanceled(err) {
				t.Fatalf("extended-protocol query cancelled while waiting: %v; want ERROR 57014", err)
			}
			if n := g.srv.Stats().Refused["acquire-timeout"]; n != 0 {
				t.Errorf("%d acquire timeouts counted; a cancel is not a refusal", n)
			}
		})
	}
}

// 200 times: a query on a fresh connection, cancelled after 0 to 20 ms,
// with the pool saturated by other clients: every one ends in 57014 (none
// can have finished: no backend was free).
func TestCancelRepeatedWithSaturatedPool(t *testing.T) {
	c := pgtest.Require(t)
	for _, mode := range cancelModes {
		t.Run(string(mode), func(t *testing.T) {
			pcfg := testPoolConfig()
			pcfg.Size = 2
			pcfg.AcquireTimeout = time.Minute
			// Re-checking the password takes a slot of the full pool.
			pcfg.AuthCacheTTL = 10 * time.Minute
			g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), pcfg, fltMode(mode))
			saturate(t, g, 2)
			deadline := time.Now().Add(90 * time.Second)
			var wrong []string
			n := 0
			for ; n < 200 && time.Now().Before(deadline); n++ {
				client, err := g.connect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
				if err != nil {
					t.Fatalf("connect %d: %v", n, err)
				}
				delay := time.Duration(mathrand.IntN(21)) * time.Millisecond
				v, err := queryThenCancel(t, client, "select 'ran'", delay)
				if !isCanceled(err) {
					wrong = append(wrong, delay.String()+": "+v+" "+errString(err))
				}
				client.Close(context.Background())
			}
			if n < 200 {
				t.Errorf("only %d repetitions within the time bound", n)
			}
			if len(wrong) > 0 {
				t.Errorf("%d of %d cancels did not end the query with 57014: %v", len(wrong), n, wrong[:min(10, len(wrong))])
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return "answered"
	}
	return err.Error()
}

// A cancel that comes after its query finished has nothing to cancel, as
// on a direct connection: the client's next query is not cancelled.
func TestLateCancelSparesTheNextQuery(t *testing.T) {
	c := pgtest.Require(t)
	for _, mode := range cancelModes {
		t.Run(string(mode), func(t *testing.T) {
			g := startGateway(t, backendConfig(c, backend.TLSDisable), fltMode(mode))
			client := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			for i := range 20 {
				queryValue(t, client, "select 1")
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if err := client.CancelRequest(ctx); err != nil {
					t.Fatal(err)
				}
				cancel()
				time.Sleep(20 * time.Millisecond) // the cancel has been handled
				ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
				v, err := testkit.Query(ctx, client, "select 'next'")
				cancel()
				if err != nil || v != "next" {
					t.Fatalf("round %d: the query after a late cancel: %q, %v", i, v, err)
				}
			}
		})
	}
}

// A client that sends a cancel just as its transaction ends must not
// cancel the next client's query on the same backend. The gateway checks
// that the client still holds the backend when the cancel connection is
// open, but the server acts on the cancel a moment later; the backend is
// therefore not lent again until the server has delivered it (a backend
// between commands ignores a cancel). Before that, B's query was cancelled
// within the first few dozen rounds.
func TestCancelNeverReachesTheNextClient(t *testing.T) {
	g := txGatewayWith(t, 1, nil)
	a := txConnect(t, g)
	b := txConnect(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stop := make(chan struct{})
	bErr := make(chan error, 1)
	bRuns := 0
	go func() {
		defer close(bErr)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := testkit.Query(ctx, b, "select pg_sleep(0.002)"); err != nil {
				bErr <- err
				return
			}
			bRuns++
		}
	}()
	var cancels sync.WaitGroup
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; i < 600 && time.Now().Before(deadline); i++ {
		if _, err := testkit.Query(ctx, a, "select 1"); err != nil && !isCanceled(err) {
			t.Fatalf("round %d: client A: %v", i, err)
		}
		// A's transaction has ended; the cancel overlaps its next one,
		// which it may cancel (A's own), never B's.
		cancels.Go(func() { _ = a.CancelRequest(ctx) })
	}
	close(stop)
	cancels.Wait()
	if err := <-bErr; err != nil {
		t.Fatalf("client B's query failed after %d runs: %v (A's cancels must never reach B)", bRuns, err)
	}
	if bRuns == 0 {
		t.Fatal("client B ran no query: the test did not interleave the two clients")
	}
}

// A query cancelled while it waited for a backend, then a second cancel
// with nothing running: the client's next query runs, in both modes, as on
// a direct connection. (In session mode the session counted as not having
// had its first request yet, so the late cancel was kept and ended the
// next query.)
func TestLateCancelAfterCancelledWaitSparesTheNextQuery(t *testing.T) {
	c := pgtest.Require(t)
	for _, mode := range cancelModes {
		t.Run(string(mode), func(t *testing.T) {
			g := oneBackendGateway(t, c, mode)
			holder := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			mustQuery(t, holder, "begin") // holds the only backend
			client := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			if v, err := queryThenCancel(t, client, "select 'ran'", 50*time.Millisecond); !isCanceled(err) {
				t.Fatalf("query cancelled while waiting: %q, %v; want ERROR 57014", v, err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := client.CancelRequest(ctx); err != nil { // late: nothing runs
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond) // the cancel has been handled
			holder.Close(ctx)
			if v, err := testkit.Query(ctx, client, "select 'next'"); err != nil || v != "next" {
				t.Fatalf("the query after a late cancel: %q, %v", v, err)
			}
		})
	}
}

// A batch cancelled while it waited for a backend, whose Sync the client
// sent only after the 57014 came, leaves nothing behind: a cancel after
// the batch's ReadyForQuery, with nothing running, spares the client's
// next query. (Reading the Sync between transactions used to note a
// request on its way, and the late cancel then ended the next wait.)
func TestLateCancelAfterSkippedBatchSparesTheNextQuery(t *testing.T) {
	g := txGatewayWith(t, 1, nil)
	holder := txConnect(t, g)
	mustQuery(t, holder, "begin") // holds the only backend
	client := txConnect(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fe := client.Frontend()
	fe.Send(txParse("", "select 'ran'"))
	fe.Send(txBind(""))
	fe.Send(txExecute())
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := client.CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	msg, err := client.ReceiveMessage(ctx)
	if e, ok := msg.(*pgproto3.ErrorResponse); !ok || e.Code != "57014" {
		t.Fatalf("the cancelled batch got %#v, %v; want ErrorResponse 57014", msg, err)
	}
	fe.Send(txSync())
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	if msg, err := client.ReceiveMessage(ctx); err != nil {
		t.Fatal(err)
	} else if _, ok := msg.(*pgproto3.ReadyForQuery); !ok {
		t.Fatalf("the Sync of the cancelled batch got %#v; want ReadyForQuery", msg)
	}
	mustQuery(t, holder, "commit")
	if err := client.CancelRequest(ctx); err != nil { // late: nothing runs
		t.Fatal(err)
	}
	if v, err := testkit.Query(ctx, client, "select 'next'"); err != nil || v != "next" {
		t.Fatalf("the query after a late cancel: %q, %v", v, err)
	}
}
