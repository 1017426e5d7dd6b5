package wire_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
	"github.com/querycop/querycop/wire"
)

// SCRAM end to end (issue 16): the gateway checks clients with SCRAM
// against the server's own verifier and, in pass-through mode, logs in to
// the server with the keys recovered from the client's proof. Every role
// created here falls under pg_hba.conf's catch-all scram-sha-256 line, so a
// session the server opened for one is a SCRAM login it accepted; the
// server log (log_connections) says so too.

const (
	authRole     = "querycop_auth" // the role docs/security.md creates
	authRolePass = "auth-role-secret"
	e2ePass      = "e2e-scram-secret"
)

func init() { secrets = append(secrets, authRolePass, e2ePass, "e2e-new-secret") }

// scramRole creates a login role with a SCRAM password and drops it when
// the test ends.
func scramRole(t *testing.T, c *pgtest.Cluster, name, password string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Exec(ctx, fmt.Sprintf("DROP ROLE IF EXISTS %s; CREATE ROLE %s LOGIN PASSWORD '%s'", name, name, password)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = c.Exec(ctx, "DROP ROLE IF EXISTS "+name)
	})
}

var authQuerySetup sync.Once

// setUpAuthQuery runs, once per cluster, the SQL docs/security.md gives for
// the auth query's role and lookup function, exactly as written there.
func setUpAuthQuery(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	var err error
	authQuerySetup.Do(func() {
		var sql string
		if sql, err = testkit.AuthQuerySQL(filepath.Join("..", "docs"), authRolePass); err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		err = c.Exec(ctx, sql)
	})
	if err != nil {
		t.Fatalf("setting up the auth query as docs/security.md says: %v", err)
	}
}

// gatewayCert issues the gateway's client-leg certificate.
func gatewayCert(t *testing.T, c *pgtest.Cluster) func(*wire.Config) {
	t.Helper()
	cert, key, err := c.CA.Issue(t.TempDir(), "gateway", "localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return func(w *wire.Config) { w.TLSCert, w.TLSKey = cert, key }
}

func withAuthQuery(w *wire.Config) {
	w.AuthUser, w.AuthPassword = authRole, authRolePass
	w.AuthQuery, w.AuthDatabase, w.AuthQueryCacheTTL = wire.DefaultAuthQuery, "postgres", 30*time.Second
}

// connString is a libpq-style connection string to the gateway.
func (g *gateway) connString(c *pgtest.Cluster, user, password, extra string) string {
	cs := fmt.Sprintf("host=localhost port=%d user=%s dbname=%s sslrootcert=%s connect_timeout=20 %s",
		g.port, user, pgtest.Database, c.CA.CertFile, extra)
	if password != "" {
		cs += " password=" + password
	}
	return cs
}

// loginsAs checks the three clients the issue names, each refusing
// anything but SCRAM: pgx with channel binding required, pgconn (pgx's
// lower layer) with require_auth=scram-sha-256 over plaintext, and psql
// (libpq) with channel_binding=require sslmode=require.
func loginsAs(t *testing.T, c *pgtest.Cluster, g *gateway, user, password string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	conn, err := pgx.Connect(ctx, g.connString(c, user, password, "sslmode=verify-full channel_binding=require"))
	if err != nil {
		t.Fatalf("pgx with channel_binding=require as %s: %v", user, err)
	}
	var who string
	if err := conn.QueryRow(ctx, "select current_user").Scan(&who); err != nil || who != user {
		t.Errorf("pgx: current_user = %q, %v; want %s", who, err, user)
	}
	conn.Close(ctx)

	pc, err := pgconn.Connect(ctx, g.connString(c, user, password, "sslmode=disable require_auth=scram-sha-256"))
	if err != nil {
		t.Fatalf("pgconn with require_auth=scram-sha-256 (no TLS) as %s: %v", user, err)
	}
	if got := queryValue(t, pc, "select current_user"); got != user {
		t.Errorf("pgconn: current_user = %s", got)
	}
	pc.Close(ctx)

	psql := psqlPath(t)
	cmd := exec.CommandContext(ctx, psql, "-X", "-At", "-c", "select current_user",
		g.connString(c, user, "", "channel_binding=require sslmode=require"))
	cmd.Env = append(os.Environ(), "PGPASSWORD="+password)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != user {
		t.Errorf("psql with channel_binding=require sslmode=require as %s: %v: %s", user, err, out)
	}
}

func psqlPath(t *testing.T) string {
	t.Helper()
	psql, err := exec.LookPath("psql")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("psql is required in CI")
		}
		t.Skip("psql not installed")
	}
	return psql
}

// serverSawSCRAM checks the server log for a SCRAM login of user (the
// cluster runs with log_connections).
func serverSawSCRAM(t *testing.T, c *pgtest.Cluster, user string) {
	t.Helper()
	log, err := os.ReadFile(c.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`connection authenticated: identity="%s" method=scram-sha-256`, user)
	if !strings.Contains(string(log), want) {
		t.Errorf("the server log has no %q", want)
	}
}

func wantPgError(t *testing.T, err error, code, msgPart string) *pgconn.PgError {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != code || !strings.Contains(pgErr.Message, msgPart) {
		t.Fatalf("got %v, want SQLSTATE %s with %q", err, code, msgPart)
	}
	return pgErr
}

func TestSCRAMEndToEndAuthFile(t *testing.T) {
	c := pgtest.Require(t)
	const user = "e2e_file"
	scramRole(t, c, user, e2ePass)
	file := writeAuthFile(t, fmt.Sprintf(`"%s" "%s"`, user, storedSecret(t, c, user)))
	g := startGateway(t, backendConfig(c, backend.TLSVerifyFull), gatewayCert(t, c),
		func(w *wire.Config) { w.ClientAuthFile = file })

	loginsAs(t, c, g, user, e2ePass)
	serverSawSCRAM(t, c, user)
	// pgx and psql bound their channel; pgconn had no TLS to bind to.
	if l := g.srv.Stats().Logins; l["scram-sha-256-plus"] != 2 || l["scram-sha-256"] != 1 || l["cleartext"] != 0 {
		t.Errorf("logins by method = %v, want 2 scram-sha-256-plus, 1 scram-sha-256, no cleartext", l)
	}

	_, err := g.connect(t, user, "wrong")
	wantPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user %q", user))
	if strings.Contains(g.log.String(), "wrong") {
		t.Error("a password attempt reached the log")
	}

	t.Run("transaction mode", func(t *testing.T) {
		// Backends are opened as transactions need them, long after the
		// client's login: each with the keys the pool keeps. Two clients
		// in turn, their transactions on backends the pool dialled itself.
		g := startGateway(t, backendConfig(c, backend.TLSVerifyFull), gatewayCert(t, c), func(w *wire.Config) {
			w.ClientAuthFile, w.PoolMode = file, wire.TransactionMode
		})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var conns []*pgx.Conn
		for range 2 {
			conn, err := pgx.Connect(ctx, g.connString(c, user, e2ePass, "sslmode=verify-full channel_binding=require"))
			if err != nil {
				t.Fatalf("pgx in transaction mode: %v", err)
			}
			defer conn.Close(ctx)
			conns = append(conns, conn)
		}
		tx, err := conns[0].Begin(ctx) // holds one backend
		if err != nil {
			t.Fatal(err)
		}
		var who string
		if err := conns[1].QueryRow(ctx, "select current_user").Scan(&who); err != nil || who != user {
			t.Errorf("second client, on a second backend: current_user = %q, %v", who, err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(g.log.String(), `"message":"backend connection opened"`); n < 2 {
			t.Errorf("%d backend connections opened, want 2: the second client did not need one of its own", n)
		}
	})
}

func TestSCRAMEndToEndAuthQuery(t *testing.T) {
	c := pgtest.Require(t)
	setUpAuthQuery(t, c)
	const user = "e2e_query"
	scramRole(t, c, user, e2ePass)
	g := startGateway(t, backendConfig(c, backend.TLSVerifyFull), gatewayCert(t, c), withAuthQuery)

	loginsAs(t, c, g, user, e2ePass)
	serverSawSCRAM(t, c, user)

	t.Run("wrong password", func(t *testing.T) {
		_, err := g.connect(t, user, "wrong")
		wantPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user %q", user))
	})
	t.Run("unknown user and superuser get the same answer", func(t *testing.T) {
		for _, u := range []string{"e2e_nobody", "postgres"} {
			_, err := g.connect(t, u, "whatever")
			wantPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user %q", u))
		}
	})
	t.Run("a role with an MD5 secret is asked for its password", func(t *testing.T) {
		// No SCRAM secret to check against: the server judges the password
		// (pg_hba.conf has md5 for u_md5), as without the auth query.
		conn := g.mustConnect(t, pgtest.UserMD5, pgtest.PassMD5)
		if got := queryValue(t, conn, "select current_user"); got != pgtest.UserMD5 {
			t.Errorf("current_user = %s", got)
		}
		if l := g.srv.Stats().Logins; l["cleartext"] != 1 {
			t.Errorf("logins by method = %v, want this one as the only cleartext", l)
		}
		_, err := g.connect(t, pgtest.UserMD5, pgtest.PassMD5, "require_auth=scram-sha-256")
		if err == nil {
			t.Error("a client requiring SCRAM logged in as a role the gateway has no SCRAM secret for")
		}
	})
}

func TestSCRAMEndToEndTokenMode(t *testing.T) {
	c := pgtest.Require(t)
	setUpAuthQuery(t, c)
	cfg := backendConfig(c, backend.TLSVerifyFull)
	cfg.Token.Cmd = tokenScript(t, map[string]string{pgtest.UserSCRAM: pgtest.PassSCRAM, authRole: authRolePass})
	t.Run("auth query", func(t *testing.T) {
		g := startGateway(t, cfg, gatewayCert(t, c), withAuthQuery)
		loginsAs(t, c, g, pgtest.UserSCRAM, pgtest.PassSCRAM)
		_, err := g.connect(t, pgtest.UserSCRAM, "wrong")
		wantPgError(t, err, "28P01", "password authentication failed")
	})
	t.Run("auth file", func(t *testing.T) {
		file := writeAuthFile(t, fmt.Sprintf(`"%s" "%s"`, pgtest.UserSCRAM, storedSecret(t, c, pgtest.UserSCRAM)))
		g := startGateway(t, cfg, gatewayCert(t, c), func(w *wire.Config) { w.ClientAuthFile = file })
		loginsAs(t, c, g, pgtest.UserSCRAM, pgtest.PassSCRAM)
	})
}

// tokenScript writes a token command printing the given role's password.
func tokenScript(t *testing.T, passwords map[string]string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("#!/bin/sh\ncase \"$QUERYCOP_BACKEND_USER\" in\n")
	for role, pw := range passwords {
		fmt.Fprintf(&b, "%s) echo '%s' ;;\n", role, pw)
	}
	b.WriteString("*) echo \"no password for $QUERYCOP_BACKEND_USER\" >&2; exit 1 ;;\nesac\n")
	path := filepath.Join(t.TempDir(), "token.sh")
	if err := os.WriteFile(path, []byte(b.String()), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// A password changed on the server while the gateway holds the old
// verifier: the client with the old password, which the gateway's copy
// still accepts, gets an error that says so, not a bare "password
// authentication failed"; with the auth query the next login reads the new
// secret, so the new password works at once.
func TestSCRAMEndToEndPasswordChanged(t *testing.T) {
	c := pgtest.Require(t)
	setUpAuthQuery(t, c)
	const user = "e2e_rotate"
	scramRole(t, c, user, e2ePass)
	pcfg := testPoolConfig()
	pcfg.AuthCacheTTL = 0 // every client is checked with the server
	changePassword := func(t *testing.T, pw string) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := c.Exec(ctx, fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", user, pw)); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("auth file", func(t *testing.T) {
		changePassword(t, e2ePass)
		file := writeAuthFile(t, fmt.Sprintf(`"%s" "%s"`, user, storedSecret(t, c, user)))
		g := startPooledGateway(t, backendConfig(c, backend.TLSVerifyFull), pcfg, func(w *wire.Config) { w.ClientAuthFile = file })
		g.mustConnect(t, user, e2ePass)
		changePassword(t, "e2e-new-secret")
		_, err := g.connect(t, user, e2ePass)
		pgErr := wantPgError(t, err, "28P01", "password for this user has changed")
		if !strings.Contains(pgErr.Hint, "GATEKEEPER_CLIENT_AUTH_FILE") {
			t.Errorf("hint %q does not say what to refresh", pgErr.Hint)
		}
		if !strings.Contains(g.log.String(), "no longer matches the server's") {
			t.Error("the operator is not told the auth file is stale")
		}
	})

	t.Run("auth query", func(t *testing.T) {
		changePassword(t, e2ePass)
		g := startPooledGateway(t, backendConfig(c, backend.TLSVerifyFull), pcfg, withAuthQuery)
		g.mustConnect(t, user, e2ePass) // the old secret is now cached
		changePassword(t, "e2e-new-secret")
		_, err := g.connect(t, user, e2ePass)
		wantPgError(t, err, "28P01", "password for this user has changed")
		conn := g.mustConnect(t, user, "e2e-new-secret")
		queryValue(t, conn, "select 1")
		_, err = g.connect(t, user, e2ePass)
		wantPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user %q", user))
	})
}

func TestSCRAMEndToEndAuthQueryBroken(t *testing.T) {
	c := pgtest.Require(t)
	setUpAuthQuery(t, c)
	const user = "e2e_broken"
	scramRole(t, c, user, e2ePass)

	t.Run("role missing", func(t *testing.T) {
		g := startGateway(t, backendConfig(c, backend.TLSVerifyFull), withAuthQuery,
			func(w *wire.Config) { w.AuthUser = "e2e_no_such_role" })
		_, err := g.connect(t, user, e2ePass)
		pgErr := wantPgError(t, err, "28000", `GATEKEEPER_AUTH_USER "e2e_no_such_role" cannot log in`)
		if pgErr.Hint == "" {
			t.Error("no hint on what to do")
		}
		if !strings.Contains(g.log.String(), "auth query failed") {
			t.Error("the failure is not logged")
		}
	})
	t.Run("lookup function missing", func(t *testing.T) {
		g := startGateway(t, backendConfig(c, backend.TLSVerifyFull), withAuthQuery,
			func(w *wire.Config) { w.AuthDatabase = pgtest.Database })
		_, err := g.connect(t, user, e2ePass)
		wantPgError(t, err, "28000", "GATEKEEPER_AUTH_QUERY")
	})
	t.Run("wrong auth role password", func(t *testing.T) {
		g := startGateway(t, backendConfig(c, backend.TLSVerifyFull), withAuthQuery,
			func(w *wire.Config) { w.AuthPassword = "not-it" })
		_, err := g.connect(t, user, e2ePass)
		wantPgError(t, err, "28000", "cannot log in")
	})
}

// Answers are cached per user, found or not, so a flood of logins does not
// become a flood of queries.
func TestAuthQueryCache(t *testing.T) {
	c := pgtest.Require(t)
	setUpAuthQuery(t, c)
	const user = "e2e_cached"
	scramRole(t, c, user, e2ePass)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// A lookup that counts its calls, under the same privileges.
	if err := c.Exec(ctx, `
		CREATE SCHEMA IF NOT EXISTS e2e_count;
		CREATE TABLE IF NOT EXISTS e2e_count.calls (name text);
		TRUNCATE e2e_count.calls;
		CREATE OR REPLACE FUNCTION e2e_count.lookup(p_user text) RETURNS TABLE (username text, secret text)
		LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
			INSERT INTO e2e_count.calls VALUES (p_user);
			SELECT * FROM querycop.lookup(p_user)
		$$;
		GRANT USAGE ON SCHEMA e2e_count TO querycop_auth;
		GRANT EXECUTE ON FUNCTION e2e_count.lookup(text) TO querycop_auth;`); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, backendConfig(c, backend.TLSVerifyFull), withAuthQuery,
		func(w *wire.Config) { w.AuthQuery = "SELECT username, secret FROM e2e_count.lookup($1)" })

	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if conn, err := g.connect(t, user, e2ePass); err != nil {
				t.Errorf("login: %v", err)
			} else {
				conn.Close(context.Background())
			}
		}()
	}
	wg.Wait()
	// Unknown names, each tried three times (the failure limit per address
	// stops the rest early, which only lowers the count).
	for range 3 {
		for _, ghost := range []string{"e2e_ghost1", "e2e_ghost2"} {
			g.connect(t, ghost, "x")
		}
	}
	calls := map[string]int{}
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", c.SocketDir, c.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	res, err := conn.Exec(ctx, "select name, count(*) from e2e_count.calls group by name").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range res[0].Rows {
		var n int
		fmt.Sscan(string(row[1]), &n)
		calls[string(row[0])] = n
	}
	for _, name := range []string{user, "e2e_ghost1", "e2e_ghost2"} {
		if calls[name] != 1 {
			t.Errorf("the auth query ran %d times for %s, want 1 (calls: %v)", calls[name], name, calls)
		}
	}
	st := g.srv.Stats().AuthQuery
	if st["scram"] != 1 || st["not_found"] != 2 || st["cached"] < 7 || st["failed"] != 0 {
		t.Errorf("lookups by result = %v, want 1 scram, 2 not_found, the rest cached", st)
	}
}
