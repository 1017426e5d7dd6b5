package wire_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/wire"
)

// nextQueryError waits for the gateway to act, then runs a query and
// returns the error it ends with.
func nextQueryError(t *testing.T, conn *pgconn.PgConn, wait time.Duration) *pgconn.PgError {
	t.Helper()
	time.Sleep(wait)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := conn.Exec(ctx, "select 1").ReadAll()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("got %v, want the gateway's FATAL error", err)
	}
	return pgErr
}

func TestIdleTimeouts(t *testing.T) {
	c := pgtest.Require(t)
	for _, mode := range []wire.PoolMode{wire.SessionMode, wire.TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			g := startGateway(t, backendConfig(c, backend.TLSDisable), func(w *wire.Config) {
				w.PoolMode = mode
				w.MaxPreparedStatements = 100
				w.ClientIdleTimeout = 700 * time.Millisecond
				w.IdleInTransactionTimeout = 500 * time.Millisecond
			})
			// A query that runs longer than either timeout is not idleness.
			busy := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			queryValue(t, busy, "select pg_sleep(1.2)")
			if _, err := busy.Exec(context.Background(), "begin; select pg_sleep(1); commit").ReadAll(); err != nil {
				t.Errorf("a long query inside a transaction was cut: %v", err)
			}

			idle := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			queryValue(t, idle, "select 1")
			if e := nextQueryError(t, idle, 1500*time.Millisecond); e.Code != "57P05" || !strings.Contains(e.Message, "GATEKEEPER_CLIENT_IDLE_TIMEOUT") {
				t.Errorf("idle client: got %s %q, want 57P05 naming GATEKEEPER_CLIENT_IDLE_TIMEOUT", e.Code, e.Message)
			}

			inTx := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			if _, err := inTx.Exec(context.Background(), "begin; select pg_advisory_xact_lock(4242)").ReadAll(); err != nil {
				t.Fatal(err)
			}
			if e := nextQueryError(t, inTx, 1200*time.Millisecond); e.Code != "25P03" {
				t.Errorf("idle in transaction: got %s %q, want 25P03", e.Code, e.Message)
			}
			// The transaction was rolled back: its lock is free.
			other := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			if got := queryValue(t, other, "select pg_try_advisory_lock(4242)"); got != "t" {
				t.Error("the timed-out transaction still holds its lock")
			}
			queryValue(t, other, "select pg_advisory_unlock(4242)")
		})
	}
}

func TestMaxMessageSize(t *testing.T) {
	c := pgtest.Require(t)
	for _, mode := range []wire.PoolMode{wire.SessionMode, wire.TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			g := startGateway(t, backendConfig(c, backend.TLSDisable), func(w *wire.Config) {
				w.PoolMode = mode
				w.MaxPreparedStatements = 100
				w.MaxMessageSize = 64 << 10
			})
			conn := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			queryValue(t, conn, fmt.Sprintf("select length('%s')", strings.Repeat("x", 60<<10)))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := conn.Exec(ctx, fmt.Sprintf("select length('%s')", strings.Repeat("x", 70<<10))).ReadAll()
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "08P01" || !strings.Contains(pgErr.Message, "GATEKEEPER_MAX_MESSAGE_SIZE") {
				t.Fatalf("oversized message: got %v, want 08P01 naming GATEKEEPER_MAX_MESSAGE_SIZE", err)
			}
			// Everyone else is still served.
			queryValue(t, g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM), "select 1")
		})
	}
}

func TestClientCertificateReload(t *testing.T) {
	c := pgtest.Require(t)
	dir := t.TempDir()
	cert, key, err := c.CA.Issue(dir, "gateway", "localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, backendConfig(c, backend.TLSDisable), func(w *wire.Config) { w.TLSCert, w.TLSKey = cert, key })
	serial := func() string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=localhost port=%d user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s",
			g.port, pgtest.UserSCRAM, pgtest.PassSCRAM, pgtest.Database, c.CA.CertFile))
		if err != nil {
			t.Fatalf("TLS connect: %v", err)
		}
		defer conn.Close(ctx)
		return conn.Conn().(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := serial()
	// Rotate in place, as cert-manager does.
	newDir := t.TempDir()
	newCert, newKey, err := c.CA.Issue(newDir, "gateway", "localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range [][2]string{{newCert, cert}, {newKey, key}} {
		data, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f[1], data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for serial() == before {
		if time.Now().After(deadline) {
			t.Fatal("the rotated certificate was not picked up")
		}
		time.Sleep(500 * time.Millisecond)
	}
}
