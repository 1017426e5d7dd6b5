package wire_test

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/wire"
)

var roles = []struct{ user, password string }{
	{pgtest.UserSCRAM, pgtest.PassSCRAM},
	{pgtest.UserMD5, pgtest.PassMD5},
	{pgtest.UserPassword, pgtest.PassPassword},
	{pgtest.UserTrust, ""},
}

func TestPassThroughAuthentication(t *testing.T) {
	c := pgtest.Require(t)
	for _, mode := range []backend.TLSMode{backend.TLSDisable, backend.TLSPrefer, backend.TLSVerifyFull} {
		g := startGateway(t, backendConfig(c, mode))
		for _, r := range roles {
			t.Run(string(mode)+"/"+r.user, func(t *testing.T) {
				conn := g.mustConnect(t, r.user, r.password)
				if got := queryValue(t, conn, "select current_user"); got != r.user {
					t.Errorf("current_user = %q, want %q", got, r.user)
				}
				wantSSL := map[backend.TLSMode]string{backend.TLSDisable: "f", backend.TLSPrefer: "t", backend.TLSVerifyFull: "t"}[mode]
				if got := queryValue(t, conn, "select ssl from pg_stat_ssl where pid = pg_backend_pid()"); got != wantSSL {
					t.Errorf("backend ssl = %s, want %s", got, wantSSL)
				}
			})
		}
	}
}

func TestTokenModeAuthentication(t *testing.T) {
	c := pgtest.Require(t)
	cfg := backendConfig(c, backend.TLSVerifyFull)
	cfg.Token.Cmd = tokenCmd(t, "print-password.sh")
	g := startGateway(t, cfg)
	for _, r := range roles {
		t.Run(r.user, func(t *testing.T) {
			// Whatever the client says is dropped: the token is the credential.
			conn := g.mustConnect(t, r.user, "client-side-secret")
			if got := queryValue(t, conn, "select current_user"); got != r.user {
				t.Errorf("current_user = %q, want %q", got, r.user)
			}
		})
	}
}

func TestBackendTLSModes(t *testing.T) {
	c := pgtest.Require(t)
	tests := []struct {
		name    string
		adjust  func(*backend.Config)
		wantErr string // substring of the client's error; empty = success
	}{
		{"verify-full", func(b *backend.Config) {}, ""},
		{"verify-ca ignores the name", func(b *backend.Config) {
			b.TLSMode = backend.TLSVerifyCA
			b.Host = "127.0.0.1"
			b.TLSServerName = "wrong.example"
		}, ""},
		{"verify-full wrong CA", func(b *backend.Config) { b.TLSCAFile = c.OtherCA.CertFile },
			"backend TLS negotiation failed: x509: certificate signed by unknown authority"},
		{"verify-ca wrong CA", func(b *backend.Config) { b.TLSMode = backend.TLSVerifyCA; b.TLSCAFile = c.OtherCA.CertFile },
			"backend TLS negotiation failed: x509: certificate signed by unknown authority"},
		{"verify-full host name mismatch", func(b *backend.Config) { b.TLSServerName = "wrong.example" },
			"backend TLS negotiation failed: x509: certificate is valid for localhost, not wrong.example"},
		{"verify-full server name override", func(b *backend.Config) {
			b.Host = "127.0.0.1"
			b.TLSServerName = "localhost"
		}, ""},
		{"require", func(b *backend.Config) { b.TLSMode = backend.TLSRequire; b.TLSCAFile = "" }, ""},
		{"require with a CA file verifies the chain", func(b *backend.Config) {
			b.TLSMode = backend.TLSRequire
			b.TLSCAFile = c.OtherCA.CertFile
		}, "backend TLS negotiation failed: x509: certificate signed by unknown authority"},
		{"allow", func(b *backend.Config) { b.TLSMode = backend.TLSAllow }, ""},
		{"unreachable", func(b *backend.Config) { b.Port = freeClosedPort(t) }, "backend dial failed: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := backendConfig(c, backend.TLSVerifyFull)
			tt.adjust(&cfg)
			g := startGateway(t, cfg)
			conn, err := g.connect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("connect: %v", err)
				}
				defer conn.Close(context.Background())
				queryValue(t, conn, "select 1")
				return
			}
			if err == nil {
				conn.Close(context.Background())
				t.Fatalf("connect succeeded, want %q", tt.wantErr)
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("error is not a server error: %v", err)
			}
			if !strings.Contains(pgErr.Message, tt.wantErr) || pgErr.Code != "08001" || pgErr.Severity != "FATAL" {
				t.Errorf("client got %s %s %q, want FATAL 08001 containing %q", pgErr.Severity, pgErr.Code, pgErr.Message, tt.wantErr)
			}
			if !strings.Contains(g.log.String(), tt.wantErr) {
				t.Errorf("log lacks %q", tt.wantErr)
			}
		})
	}
}

// TestBackendWithoutTLS runs against a second cluster that has TLS off.
func TestBackendWithoutTLS(t *testing.T) {
	pgtest.Require(t)
	plain, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(plain.Stop)

	t.Run("require refuses", func(t *testing.T) {
		g := startGateway(t, backendConfig(plain, backend.TLSRequire))
		_, err := g.connect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || !strings.HasPrefix(pgErr.Message, "backend TLS negotiation failed: server does not support TLS") {
			t.Fatalf("got %v, want backend TLS negotiation failed: server does not support TLS", err)
		}
	})
	for _, mode := range []backend.TLSMode{backend.TLSPrefer, backend.TLSAllow, backend.TLSDisable} {
		t.Run(string(mode)+" falls back to plaintext", func(t *testing.T) {
			g := startGateway(t, backendConfig(plain, mode))
			conn := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			if got := queryValue(t, conn, "select ssl from pg_stat_ssl where pid = pg_backend_pid()"); got != "f" {
				t.Errorf("ssl = %s, want f", got)
			}
		})
	}
}

func TestStrayPGEnvironmentChangesNothing(t *testing.T) {
	c := pgtest.Require(t)
	t.Setenv("PGSSLMODE", "disable")
	t.Setenv("PGHOST", "192.0.2.1")
	t.Setenv("PGPORT", "1")
	t.Setenv("PGUSER", "nobody")
	t.Setenv("PGPASSWORD", "wrong")
	t.Setenv("PGDATABASE", "nope")
	g := startGateway(t, backendConfig(c, backend.TLSVerifyFull))
	conn := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	if got := queryValue(t, conn, "select ssl::text || current_user || current_database() from pg_stat_ssl where pid = pg_backend_pid()"); got != "true"+pgtest.UserSCRAM+pgtest.Database {
		t.Errorf("got %q: the PG* environment changed the backend connection", got)
	}
}

func TestWrongPasswordGetsServerError(t *testing.T) {
	c := pgtest.Require(t)
	g := startGateway(t, backendConfig(c, backend.TLSVerifyFull))
	for _, user := range []string{pgtest.UserSCRAM, pgtest.UserMD5, pgtest.UserPassword} {
		t.Run(user, func(t *testing.T) {
			_, err := g.connect(t, user, "not-the-password")
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("got %v, want a server error", err)
			}
			want := fmt.Sprintf("password authentication failed for user %q", user)
			if pgErr.Code != "28P01" || pgErr.Message != want {
				t.Errorf("got %s %q, want 28P01 %q", pgErr.Code, pgErr.Message, want)
			}
		})
	}
}

func TestTokenCommandFailure(t *testing.T) {
	c := pgtest.Require(t)
	cfg := backendConfig(c, backend.TLSVerifyFull)
	cfg.Token.Cmd = tokenCmd(t, "fail-aadsts.sh")
	g := startGateway(t, cfg)
	_, err := g.connect(t, pgtest.UserSCRAM, "x")
	want := "backend token command failed: AADSTS700082: The refresh token has expired due to inactivity."
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Message != want || pgErr.Severity != "FATAL" {
		t.Fatalf("client got %v, want FATAL %q", err, want)
	}
	found := false
	for _, line := range strings.Split(g.log.String(), "\n") {
		if strings.Contains(line, `"level":"warn"`) && strings.Contains(line, want) {
			found = true
		}
	}
	if !found {
		t.Errorf("no WARN log line with %q:\n%s", want, g.log.String())
	}
}

func TestCancelThroughGateway(t *testing.T) {
	c := pgtest.Require(t)
	for _, mode := range []backend.TLSMode{backend.TLSDisable, backend.TLSVerifyFull} {
		t.Run(string(mode), func(t *testing.T) {
			g := startGateway(t, backendConfig(c, mode))
			conn := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			pid := queryValue(t, conn, "select pg_backend_pid()")
			start := time.Now()
			go func() {
				time.Sleep(500 * time.Millisecond)
				// Sent to the gateway's address with the key the gateway gave.
				if err := conn.CancelRequest(context.Background()); err != nil {
					t.Errorf("CancelRequest: %v", err)
				}
			}()
			_, err := conn.Exec(context.Background(), "select pg_sleep(30)").ReadAll()
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
				t.Fatalf("got %v, want SQLSTATE 57014", err)
			}
			if time.Since(start) > 20*time.Second {
				t.Errorf("the query was not cancelled")
			}
			if conn.IsClosed() {
				t.Fatal("connection closed after cancel")
			}
			if got := queryValue(t, conn, "select pg_backend_pid()"); got != pid {
				t.Errorf("backend changed after cancel: %s -> %s", pid, got)
			}
		})
	}
}

func TestUnknownCancelKeyIgnored(t *testing.T) {
	c := pgtest.Require(t)
	g := startGateway(t, backendConfig(c, backend.TLSDisable))
	conn := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	raw, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	msg := binary.BigEndian.AppendUint32(nil, 16)
	msg = binary.BigEndian.AppendUint32(msg, 80877102)
	msg = binary.BigEndian.AppendUint32(msg, conn.PID())
	msg = binary.BigEndian.AppendUint32(msg, 12345)
	raw.Write(msg)
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := raw.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("unknown cancel key: read %d bytes, %v; want EOF and nothing", n, err)
	}
	queryValue(t, conn, "select 1")
}

func TestClientTLSVerifyFull(t *testing.T) {
	c := pgtest.Require(t)
	dir := t.TempDir()
	cert, key, err := c.CA.Issue(dir, "gateway", "localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, backendConfig(c, backend.TLSVerifyFull), func(w *wire.Config) {
		w.TLSCert, w.TLSKey = cert, key
	})
	cs := fmt.Sprintf("host=localhost port=%d user=%s password=%s dbname=%s sslmode=verify-full sslrootcert=%s",
		g.port, pgtest.UserSCRAM, pgtest.PassSCRAM, pgtest.Database, c.CA.CertFile)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, cs)
	if err != nil {
		t.Fatalf("verify-full to the gateway: %v", err)
	}
	defer conn.Close(ctx)
	if _, ok := conn.Conn().(*tls.Conn); !ok {
		t.Error("client leg is not TLS")
	}
	queryValue(t, conn, "select 1")

	// Without PROXY_TLS_CERT, a client that requires TLS is refused ('N').
	plain := startGateway(t, backendConfig(c, backend.TLSVerifyFull))
	_, err = pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s sslmode=require", plain.port, pgtest.UserSCRAM, pgtest.PassSCRAM))
	if err == nil || !strings.Contains(err.Error(), "server refused TLS") {
		t.Errorf("sslmode=require to a gateway without TLS: got %v", err)
	}
}

func TestPsql(t *testing.T) {
	c := pgtest.Require(t)
	psql, err := exec.LookPath("psql")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("psql is required in CI")
		}
		t.Skip("psql not installed")
	}
	g := startGateway(t, backendConfig(c, backend.TLSVerifyFull))
	for _, r := range roles {
		t.Run(r.user, func(t *testing.T) {
			cmd := exec.Command(psql, "-X", "-At", "-c", "select current_user",
				fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s", g.port, r.user, pgtest.Database))
			cmd.Env = append(os.Environ(), "PGPASSWORD="+r.password, "PGCONNECT_TIMEOUT=20")
			if r.password == "" {
				cmd.Env = append(cmd.Env, "PGPASSWORD=unused-for-trust")
			}
			out, err := cmd.CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != r.user {
				t.Errorf("psql: %v: %s", err, out)
			}
		})
	}
}

// rawStartup sends raw bytes as a client's start-up and returns what the
// gateway answers until it closes the connection.
func rawStartup(t *testing.T, g *gateway, payload []byte) []pgproto3.BackendMessage {
	t.Helper()
	conn, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	if len(payload) > 0 {
		if _, err := conn.Write(payload); err != nil {
			t.Fatal(err)
		}
	}
	fe := pgproto3.NewFrontend(conn, conn)
	var got []pgproto3.BackendMessage
	for {
		msg, err := fe.Receive()
		if err != nil {
			return got
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			cp := *m
			got = append(got, &cp)
		case *pgproto3.NegotiateProtocolVersion:
			cp := *m
			got = append(got, &cp)
		case *pgproto3.AuthenticationCleartextPassword:
			got = append(got, &pgproto3.AuthenticationCleartextPassword{})
			return got
		default:
			got = append(got, msg)
		}
	}
}

func startupPacket(version uint32, params ...string) []byte {
	body := binary.BigEndian.AppendUint32(nil, version)
	for _, p := range params {
		body = append(body, p...)
		body = append(body, 0)
	}
	body = append(body, 0)
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)
}

func TestBadStartupInput(t *testing.T) {
	c := pgtest.Require(t)
	g := startGateway(t, backendConfig(c, backend.TLSDisable), func(w *wire.Config) { w.LoginTimeout = 500 * time.Millisecond })
	oversized := binary.BigEndian.AppendUint32(nil, 100000)
	oversized = binary.BigEndian.AppendUint32(oversized, 196608)
	tests := []struct {
		name     string
		payload  []byte
		wantCode string
	}{
		{"http garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "08P01"},
		{"oversized", oversized, "08P01"},
		{"too short", []byte{0, 0, 0, 4}, "08P01"},
		{"silent client times out", nil, "08P01"},
		{"protocol 2", startupPacket(2<<16, "user", "x"), "0A000"},
		{"no user", startupPacket(3 << 16), "28000"},
		{"bad layout", append(binary.BigEndian.AppendUint32(nil, 14), 0, 3, 0, 0, 'u', 's', 'e', 'r', 0, 'x'), "08P01"},
		{"replication", startupPacket(3<<16, "user", "u_scram", "replication", "database"), "0A000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := rawStartup(t, g, tt.payload)
			if len(got) != 1 {
				t.Fatalf("got %d messages %#v, want one ErrorResponse", len(got), got)
			}
			e, ok := got[0].(*pgproto3.ErrorResponse)
			if !ok || e.Code != tt.wantCode || e.Severity != "FATAL" {
				t.Fatalf("got %#v, want FATAL %s", got[0], tt.wantCode)
			}
		})
	}
	// Everyone else is still served.
	conn := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	queryValue(t, conn, "select 1")
}

func TestProtocolNegotiation(t *testing.T) {
	c := pgtest.Require(t)
	g := startGateway(t, backendConfig(c, backend.TLSDisable))
	got := rawStartup(t, g, startupPacket(3<<16|2, "user", pgtest.UserSCRAM, "_pq_.something", "on"))
	if len(got) != 2 {
		t.Fatalf("got %#v, want NegotiateProtocolVersion then a password request", got)
	}
	npv, ok := got[0].(*pgproto3.NegotiateProtocolVersion)
	if !ok || npv.NewestMinorProtocol != 196608 || len(npv.UnrecognizedOptions) != 1 || npv.UnrecognizedOptions[0] != "_pq_.something" {
		t.Errorf("got %#v, want NegotiateProtocolVersion 196608 with _pq_.something", got[0])
	}
	if _, ok := got[1].(*pgproto3.AuthenticationCleartextPassword); !ok {
		t.Errorf("got %#v, want AuthenticationCleartextPassword", got[1])
	}
}

// freeClosedPort returns a loopback port nobody listens on.
func freeClosedPort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}
