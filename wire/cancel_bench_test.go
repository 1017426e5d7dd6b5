package wire_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
	"github.com/querycop/querycop/wire"
)

// BenchmarkCancelLatency measures how long a cancelled query takes to end,
// from the client's CancelRequest to its 57014, on a direct connection and
// through the gateway in each mode: a running query (the cancel goes to
// the backend), and, through the gateway, a query waiting for a backend of
// a full pool (the wait ends without the server). Not a test: it reports
// ns/cancel; docs/performance.md has a run.
//
//	go test -run '^$' -bench CancelLatency -benchtime 50x ./wire/
func BenchmarkCancelLatency(b *testing.B) {
	b.Run("direct/running", func(b *testing.B) {
		conn := benchConnect(b, cluster.Port)
		benchCancel(b, conn, 20*time.Millisecond)
	})
	for _, mode := range []wire.PoolMode{wire.SessionMode, wire.TransactionMode} {
		b.Run(string(mode)+"/running", func(b *testing.B) {
			g := startBenchGateway(b, mode, 4)
			conn := benchConnect(b, g.port)
			benchCancel(b, conn, 20*time.Millisecond)
		})
	}
	for _, mode := range []wire.PoolMode{wire.SessionMode, wire.TransactionMode} {
		b.Run(string(mode)+"/waiting-for-backend", func(b *testing.B) { benchCancelWaiting(b, mode) })
	}
}

// benchCancelWaiting cancels queries that wait for the one backend of a
// pool held by another client's pg_sleep.
func benchCancelWaiting(b *testing.B, mode wire.PoolMode) {
	{
		g := startBenchGateway(b, mode, 1)
		holder := benchConnect(b, g.port)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		held := make(chan struct{})
		go func() {
			defer close(held)
			_, _ = testkit.Query(ctx, holder, "select pg_sleep(600)")
		}()
		defer func() {
			_ = holder.CancelRequest(context.Background())
			<-held
		}()
		time.Sleep(100 * time.Millisecond)
		conn := benchConnect(b, g.port)
		benchCancel(b, conn, 5*time.Millisecond)
	}
}

func startBenchGateway(b *testing.B, mode wire.PoolMode, size int) *gateway {
	b.Helper()
	pcfg := testPoolConfig()
	pcfg.Size = size
	pcfg.AcquireTimeout = 10 * time.Minute
	g := startPooledGateway(b, backendConfig(cluster, backend.TLSDisable), pcfg, fltMode(mode))
	return g
}

func benchConnect(b *testing.B, port int) *pgconn.PgConn {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable",
		port, pgtest.UserSCRAM, pgtest.PassSCRAM, pgtest.Database))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// benchCancel runs b.N queries on conn, each cancelled after delay, and
// reports the time from each CancelRequest to the query's end.
func benchCancel(b *testing.B, conn *pgconn.PgConn, delay time.Duration) {
	var total time.Duration
	b.ResetTimer()
	for range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		done := make(chan error, 1)
		go func() {
			_, err := testkit.Query(ctx, conn, "select pg_sleep(30)")
			done <- err
		}()
		time.Sleep(delay)
		start := time.Now()
		if err := conn.CancelRequest(ctx); err != nil {
			b.Fatal(err)
		}
		err := <-done
		total += time.Since(start)
		cancel()
		if !isCanceled(err) {
			b.Fatalf("cancelled query ended with %v, want 57014", err)
		}
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/cancel")
}
