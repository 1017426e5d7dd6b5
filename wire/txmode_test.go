package wire_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/wire"
)

func txGateway(t *testing.T, size int) *gateway {
	pcfg := testPoolConfig()
	pcfg.Size = size
	return startPooledGateway(t, backendConfig(pgtest.Require(t), backend.TLSDisable), pcfg, func(w *wire.Config) {
		w.PoolMode = wire.TransactionMode
		w.MaxPreparedStatements = 200
	})
}

func pgxConnect(t *testing.T, g *gateway, extra string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable %s",
		g.port, pgtest.UserSCRAM, pgtest.PassSCRAM, pgtest.Database, extra))
	if err != nil {
		t.Fatalf("pgx.Connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestTransactionModeSmoke(t *testing.T) {
	g := txGateway(t, 2)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			conn := pgxConnect(t, g, "")
			for j := 0; j < 20; j++ {
				var got int
				// pgx prepares and caches this statement: it must work on
				// whichever backend the client borrows.
				if err := conn.QueryRow(ctx, "select $1::int + $2::int", i, j).Scan(&got); err != nil {
					errs <- fmt.Errorf("client %d query %d: %w", i, j, err)
					return
				}
				if got != i+j {
					errs <- fmt.Errorf("client %d: got %d want %d", i, got, i+j)
					return
				}
				tx, err := conn.Begin(ctx)
				if err != nil {
					errs <- err
					return
				}
				if _, err := tx.Exec(ctx, "select pg_backend_pid()"); err != nil {
					errs <- err
					return
				}
				if err := tx.Commit(ctx); err != nil {
					errs <- err
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := g.pools.Stats()
	if len(st) != 1 || st[0].Total > 2 {
		t.Errorf("pool stats %+v, want at most 2 connections", st)
	}
	ws := g.srv.Stats()
	t.Logf("transactions %d, prepared hits %d misses %d", ws.Transactions, ws.PreparedStatementHits, ws.PreparedStatementMisses)
}
