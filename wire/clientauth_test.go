package wire_test

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/wire"
)

// storedSecret reads a role's password hash as PostgreSQL stores it.
func storedSecret(t *testing.T, c *pgtest.Cluster, role string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", c.SocketDir, c.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	res, err := conn.Exec(ctx, fmt.Sprintf("select rolpassword from pg_authid where rolname = '%s'", role)).ReadAll()
	if err != nil || len(res[0].Rows) != 1 {
		t.Fatalf("reading %s's secret: %v", role, err)
	}
	return string(res[0].Rows[0][0])
}

func writeAuthFile(t *testing.T, lines ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(path, []byte("; clients of the test gateway\n"+strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestClientAuthFile(t *testing.T) {
	c := pgtest.Require(t)
	scram := storedSecret(t, c, pgtest.UserSCRAM)
	if !strings.HasPrefix(scram, "SCRAM-SHA-256$") {
		t.Fatalf("u_scram's secret is %.14s..., want SCRAM", scram)
	}
	md5sum := md5.Sum([]byte("file-md5-pass" + "filemd5user"))
	file := writeAuthFile(t,
		fmt.Sprintf(`"%s" "%s"`, pgtest.UserSCRAM, scram),
		fmt.Sprintf(`"filemd5user" "md5%s"`, hex.EncodeToString(md5sum[:])),
		fmt.Sprintf(`"%s" "%s"`, pgtest.UserPassword, pgtest.PassPassword),
	)

	t.Run("token mode", func(t *testing.T) {
		cfg := backendConfig(c, backend.TLSVerifyFull)
		cfg.Token.Cmd = tokenCmd(t, "print-password.sh")
		g := startGateway(t, cfg, func(w *wire.Config) { w.ClientAuthFile = file })
		// SCRAM against the stored verifier: pgconn answers the gateway's
		// SASL request with SCRAM-SHA-256.
		conn := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
		if got := queryValue(t, conn, "select current_user"); got != pgtest.UserSCRAM {
			t.Errorf("current_user = %s", got)
		}
		// A plain-text entry is checked with SCRAM too.
		conn = g.mustConnect(t, pgtest.UserPassword, pgtest.PassPassword)
		queryValue(t, conn, "select 1")

		for _, tt := range []struct{ user, password string }{
			{pgtest.UserSCRAM, "wrong"},
			{pgtest.UserPassword, "wrong"},
			{"nobody", "whatever"},
		} {
			_, err := g.connect(t, tt.user, tt.password)
			var pgErr *pgconn.PgError
			want := fmt.Sprintf("password authentication failed for user %q", tt.user)
			if !errors.As(err, &pgErr) || pgErr.Code != "28P01" || pgErr.Message != want {
				t.Errorf("%s with a wrong password: got %v, want 28P01 %q", tt.user, err, want)
			}
		}
		if strings.Contains(g.log.String(), "wrong") {
			t.Error("a password attempt reached the log")
		}
	})

	t.Run("md5 entry", func(t *testing.T) {
		md5File := writeAuthFile(t, fmt.Sprintf(`"%s" "md5%s"`, pgtest.UserSCRAM, func() string {
			s := md5.Sum([]byte("md5-file-secret" + pgtest.UserSCRAM))
			return hex.EncodeToString(s[:])
		}()))
		cfg := backendConfig(c, backend.TLSVerifyFull)
		cfg.Token.Cmd = tokenCmd(t, "print-password.sh")
		g := startGateway(t, cfg, func(w *wire.Config) { w.ClientAuthFile = md5File })
		conn := g.mustConnect(t, pgtest.UserSCRAM, "md5-file-secret")
		queryValue(t, conn, "select 1")
		if _, err := g.connect(t, pgtest.UserSCRAM, "md5-wrong"); err == nil {
			t.Error("wrong md5 password accepted")
		}
	})

	t.Run("pass-through with a plain entry logs in with the file's password", func(t *testing.T) {
		g := startGateway(t, backendConfig(c, backend.TLSVerifyFull), func(w *wire.Config) { w.ClientAuthFile = file })
		conn := g.mustConnect(t, pgtest.UserPassword, pgtest.PassPassword)
		if got := queryValue(t, conn, "select current_user"); got != pgtest.UserPassword {
			t.Errorf("current_user = %s", got)
		}
	})

	t.Run("psql with SCRAM", func(t *testing.T) {
		psql, err := exec.LookPath("psql")
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("psql is required in CI")
			}
			t.Skip("psql not installed")
		}
		cfg := backendConfig(c, backend.TLSVerifyFull)
		cfg.Token.Cmd = tokenCmd(t, "print-password.sh")
		g := startGateway(t, cfg, func(w *wire.Config) { w.ClientAuthFile = file })
		cmd := exec.Command(psql, "-X", "-At", "-c", "select current_user",
			fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s", g.port, pgtest.UserSCRAM, pgtest.Database))
		cmd.Env = append(os.Environ(), "PGPASSWORD="+pgtest.PassSCRAM)
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != pgtest.UserSCRAM {
			t.Errorf("psql: %v: %s", err, out)
		}
	})

	t.Run("failed logins are rate limited", func(t *testing.T) {
		cfg := backendConfig(c, backend.TLSVerifyFull)
		cfg.Token.Cmd = tokenCmd(t, "print-password.sh")
		g := startGateway(t, cfg, func(w *wire.Config) { w.ClientAuthFile = file })
		for i := 0; i < 10; i++ {
			g.connect(t, pgtest.UserSCRAM, "wrong")
		}
		_, err := g.connect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Message, "too many failed logins") {
			t.Errorf("after 10 failures the right password got %v, want 28000 too many failed logins", err)
		}
	})
}

func TestClientTLSRequired(t *testing.T) {
	c := pgtest.Require(t)
	cert, key, err := c.CA.Issue(t.TempDir(), "gateway", "localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, backendConfig(c, backend.TLSVerifyFull), func(w *wire.Config) {
		w.TLSCert, w.TLSKey, w.ClientTLS = cert, key, wire.ClientTLSRequire
	})
	_, err = g.connect(t, pgtest.UserSCRAM, pgtest.PassSCRAM) // sslmode=disable
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Message, "requires TLS") {
		t.Fatalf("plaintext client: got %v, want 28000 requires TLS", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=localhost port=%d user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s",
		g.port, pgtest.UserSCRAM, pgtest.PassSCRAM, pgtest.Database, c.CA.CertFile))
	if err != nil {
		t.Fatalf("TLS client: %v", err)
	}
	defer conn.Close(ctx)
	queryValue(t, conn, "select 1")
}
