package wire_test

import (
	"context"
	"testing"

	"github.com/rs/zerolog"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/pool"
)

// BenchmarkHandoff is what a session costs the gateway around its queries:
// admission (credential already verified), pool acquire, applying the
// client's start-up settings, and release with the reset query, against
// the real server. Two round trips to PostgreSQL per op (set_config and
// DISCARD ALL) dominate.
func BenchmarkHandoff(b *testing.B) {
	c := pgtest.Require(b)
	dialer, err := backend.NewDialer(backendConfig(c, backend.TLSDisable), nil)
	if err != nil {
		b.Fatal(err)
	}
	pools := pool.New(testPoolConfig(), dialer, false, zerolog.Nop())
	defer pools.Close()
	ctx := context.Background()
	params := backend.Params{User: pgtest.UserSCRAM, Database: pgtest.Database, Password: pgtest.PassSCRAM}
	const setQuery = "SELECT pg_catalog.set_config(E'application_name', E'bench', false)"
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		pl, err := pools.Admit(ctx, params)
		if err != nil {
			b.Fatal(err)
		}
		lease, err := pl.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := lease.Conn().Exec(ctx, setQuery); err != nil {
			b.Fatal(err)
		}
		lease.Release(pool.ReleaseState{Clean: true, TxStatus: 'I'})
		pl.Leave()
	}
}
