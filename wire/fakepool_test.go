package wire_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/testkit"
	"github.com/querycop/querycop/pool"
	"github.com/querycop/querycop/wire"
)

// stalledPools is a pool that admits everyone and never lends a
// connection: Acquire waits until its context ends, or fails at once with
// failWith when that is set. It lets the waiting paths of the sessions be
// tested without a server, and counts what the contract asks of a session
// (every Admit left exactly once, no Acquire outliving its request).
type stalledPools struct {
	mu        sync.Mutex
	admitted  int
	left      int
	acquiring int
	acquires  int
	failWith  error
}

func (p *stalledPools) Admit(ctx context.Context, params backend.Params) (wire.Pool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.admitted++
	return p, nil
}

func (p *stalledPools) Acquire(ctx context.Context) (wire.Lease, error) {
	p.mu.Lock()
	p.acquires++
	fail := p.failWith
	if fail == nil {
		p.acquiring++
	}
	p.mu.Unlock()
	if fail != nil {
		return nil, fail
	}
	<-ctx.Done()
	p.mu.Lock()
	p.acquiring--
	p.mu.Unlock()
	return nil, ctx.Err()
}

func (p *stalledPools) Leave() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.left++
}

func (p *stalledPools) StartupParams() map[string]string {
	return map[string]string{"server_version": "16.0", "server_encoding": "UTF8", "client_encoding": "UTF8",
		"DateStyle": "ISO, MDY", "integer_datetimes": "on", "standard_conforming_strings": "on"}
}

func (p *stalledPools) counts() (admitted, left, acquiring, acquires int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.admitted, p.left, p.acquiring, p.acquires
}

// startStalledGateway serves clients in front of pools, with no server
// behind it.
func startStalledGateway(t *testing.T, pools wire.Pools, mode wire.PoolMode) int {
	_, port := startStalledServer(t, pools, mode)
	return port
}

func startStalledServer(t *testing.T, pools wire.Pools, mode wire.PoolMode) (*wire.Server, int) {
	t.Helper()
	cfg := wire.Config{ListenAddr: "127.0.0.1", LoginTimeout: 5 * time.Second, MaxClientConn: 10, PoolMode: mode}
	logs := &testkit.LogBuffer{}
	srv, err := wire.NewServer(cfg, pools, false, zerolog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", logs.String())
		}
	})
	addr := srv.Addr().String()
	var port int
	fmt.Sscanf(addr[strings.LastIndex(addr, ":")+1:], "%d", &port)
	return srv, port
}

func connectStalled(t *testing.T, port int) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=app dbname=app password=pw sslmode=disable", port))
	if err != nil {
		t.Fatalf("connecting through a gateway whose pool admits everyone: %v", err)
	}
	return c
}

// With no connection to lend, a request waits in Acquire; a cancel ends
// the wait with 57014 and leaves no Acquire behind; a pool that fails
// reaches the client as the documented refusal; and a session ends its
// admission exactly once, whatever happened. No server is involved: the
// session sees the pool only through wire's interfaces.
func TestSessionAgainstAStalledPool(t *testing.T) {
	for _, mode := range fltModes {
		t.Run(string(mode), func(t *testing.T) {
			pools := &stalledPools{}
			port := startStalledGateway(t, pools, mode)
			client := connectStalled(t, port)

			for i := range 3 {
				v, err := queryThenCancel(t, client, "select 'ran'", time.Duration(i*20)*time.Millisecond)
				if !isCanceled(err) {
					t.Fatalf("cancel %d of a request waiting for a backend: %q, %v; want ERROR 57014", i, v, err)
				}
				if !waitFor(t, 10*time.Second, "the cancelled request's Acquire to return", func() (bool, string) {
					_, _, acquiring, _ := pools.counts()
					return acquiring == 0, fmt.Sprintf("%d Acquire calls waiting", acquiring)
				}) {
					t.FailNow()
				}
			}
			if _, _, _, acquires := pools.counts(); acquires == 0 {
				t.Fatal("no Acquire was made: the cancelled requests were not waiting for the pool")
			}

			pools.mu.Lock()
			pools.failWith = &pool.AcquireTimeoutError{Key: pool.Key{Database: "app", User: "app"}, Size: 1, Timeout: time.Second}
			pools.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := testkit.Query(ctx, client, "select 'ran'")
			if code := testkit.SQLState(err); code != "53300" || !strings.Contains(err.Error(), "GATEKEEPER_POOL_SIZE=1") {
				t.Fatalf("request on a pool that timed out: %v (SQLSTATE %q); want 53300 naming GATEKEEPER_POOL_SIZE", err, code)
			}
			client.Close(ctx)

			waitFor(t, 10*time.Second, "the session to leave its pool", func() (bool, string) {
				admitted, left, _, _ := pools.counts()
				return admitted == 1 && left == 1, fmt.Sprintf("admitted %d, left %d", admitted, left)
			})
			time.Sleep(50 * time.Millisecond)
			if admitted, left, _, _ := pools.counts(); admitted != 1 || left != 1 {
				t.Fatalf("admitted %d times, left %d times; want once each", admitted, left)
			}
		})
	}
}

// A request waiting for a backend when shutdown closes the session gets
// FATAL 57P01, never the failed wait as an error of its own (shutdown ends
// the waits as it starts closing sessions, so the wait used to fail first
// now and then and the client got 08001 "context canceled").
func TestShutdownAnswersWaitingRequestsWith57P01(t *testing.T) {
	for _, mode := range fltModes {
		t.Run(string(mode), func(t *testing.T) {
			for i := range 20 {
				pools := &stalledPools{}
				srv, port := startStalledServer(t, pools, mode)
				client := connectStalled(t, port)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				done := make(chan error, 1)
				go func() {
					_, err := testkit.Query(ctx, client, "select 'ran'")
					done <- err
				}()
				if !waitFor(t, 10*time.Second, "the request to wait for a backend", func() (bool, string) {
					_, _, acquiring, _ := pools.counts()
					return acquiring == 1, fmt.Sprintf("%d Acquire calls waiting", acquiring)
				}) {
					t.FailNow()
				}
				expired, expire := context.WithCancel(context.Background())
				expire() // no grace: sessions are closed at once
				_ = srv.Shutdown(expired)
				err := <-done
				cancel()
				if code := testkit.SQLState(err); code != "57P01" {
					t.Fatalf("round %d: a request waiting for a backend at shutdown got %v (SQLSTATE %q); want FATAL 57P01", i, err, code)
				}
			}
		})
	}
}
