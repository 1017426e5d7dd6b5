package wire_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/internal/pgtest"
)

// TestTokenNoPasswordPrompt: in token mode without GATEKEEPER_CLIENT_AUTH_FILE
// the gateway asks the client for no password. psql with no password and
// -w (never prompt) connects; libpq would fail with "fe_sendauth: no
// password supplied" if it were asked. A client that has a password set
// anyway connects too (it is never asked for it).
func TestTokenNoPasswordPrompt(t *testing.T) {
	c := pgtest.Require(t)
	const role = "tok_noprompt"
	env := newTokEnv(t, c)
	env.createRole(role, time.Now().Add(time.Hour))
	g := startGateway(t, tokenBackendConfig(c, "jwt-from-dir.sh"))
	env.watch(g)

	t.Run("psql without a password", func(t *testing.T) {
		psql, err := exec.LookPath("psql")
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("psql is required in CI")
			}
			t.Skip("psql not installed")
		}
		cmd := exec.Command(psql, "-X", "-w", "-At", "-c", "select current_user",
			fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable", g.port, role, pgtest.Database))
		env := []string{"PGCONNECT_TIMEOUT=20", "PGPASSFILE=" + filepath.Join(t.TempDir(), "no-pgpass")}
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "PGPASSWORD=") && !strings.HasPrefix(kv, "PGPASSFILE=") {
				env = append(env, kv)
			}
		}
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != role {
			t.Errorf("psql -w with no password: %v: %s", err, out)
		}
	})

	for _, password := range []string{"", "ignored"} {
		t.Run(fmt.Sprintf("pgconn password=%q", password), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable", g.port, role, pgtest.Database))
			if err != nil {
				t.Fatal(err)
			}
			cfg.Password = password
			conn, err := pgconn.ConnectConfig(ctx, cfg)
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			defer conn.Close(context.Background())
			row, err := tokQuery(ctx, conn, "select current_user")
			if err != nil || row[0] != role {
				t.Errorf("current_user = %v, %v; want %s", row, err, role)
			}
		})
	}

	// On the wire: the answer to the StartupMessage is AuthenticationOk,
	// with no password request before it.
	conn, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := conn.Write(startupPacket(196608, "user", role, "database", pgtest.Database)); err != nil {
		t.Fatal(err)
	}
	msg, err := pgproto3.NewFrontend(conn, conn).Receive()
	if _, ok := msg.(*pgproto3.AuthenticationOk); err != nil || !ok {
		t.Errorf("first answer to the start-up: %T, %v; want *pgproto3.AuthenticationOk", msg, err)
	}
}
