package wire_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/wire"
)

// Protocol details checked byte for byte against a direct connection to
// PostgreSQL, or against what its ProcessStartupPacket does where the test
// server cannot show it (it is built with GSSAPI and answers 'G').

const (
	sslRequestCode    = 80877103
	gssencRequestCode = 80877104
)

func requestPacket(code uint32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), code)
}

// readMessage reads one backend message whole (type, length, body).
func readRawMessage(t *testing.T, r io.Reader) []byte {
	t.Helper()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(r, hdr); err != nil {
		t.Fatalf("reading a message: %v", err)
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[1:])-4)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatalf("reading a message body: %v", err)
	}
	return append(hdr, body...)
}

func dialRaw(t *testing.T, port int) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn
}

// fatalOf decodes an ErrorResponse message and returns its severity, code
// and message (the rest, File and Line, differ between servers).
func fatalOf(t *testing.T, msg []byte) string {
	t.Helper()
	if msg[0] != 'E' {
		t.Fatalf("got message %q, want ErrorResponse", msg[0])
	}
	var e pgproto3.ErrorResponse
	if err := e.Decode(msg[5:]); err != nil {
		t.Fatal(err)
	}
	return e.SeverityUnlocalized + " " + e.Code + " " + e.Message
}

// NegotiateProtocolVersion carries the whole newest version (196608 for
// 3.0), as PostgreSQL sends it: the same bytes as a direct connection.
func TestNegotiateProtocolVersionAsPostgreSQL(t *testing.T) {
	c := pgtest.Require(t)
	g := startGateway(t, backendConfig(c, backend.TLSDisable))
	pkt := startupPacket(3<<16|2, "user", pgtest.UserSCRAM, "database", pgtest.Database, "_pq_.something", "on")
	var got [2][]byte
	for i, port := range []int{c.Port, g.port} {
		conn := dialRaw(t, port)
		if _, err := conn.Write(pkt); err != nil {
			t.Fatal(err)
		}
		got[i] = readRawMessage(t, conn)
	}
	if !bytes.Equal(got[0], got[1]) {
		t.Errorf("gateway sent % x\nPostgreSQL sent % x", got[1], got[0])
	}
	if got[1][0] != 'v' || binary.BigEndian.Uint32(got[1][5:9]) != 196608 {
		t.Errorf("gateway sent % x, want NegotiateProtocolVersion with newest version 196608", got[1])
	}
}

// Inside TLS neither an SSLRequest nor a GSSENCRequest is accepted: each is
// the unknown protocol version it then is, with PostgreSQL's own FATAL.
func TestNoEncryptionRequestInsideTLS(t *testing.T) {
	c := pgtest.Require(t)
	cert, key, err := c.CA.Issue(t.TempDir(), "gateway", "localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, backendConfig(c, backend.TLSDisable), func(w *wire.Config) { w.TLSCert, w.TLSKey = cert, key })
	for _, code := range []uint32{gssencRequestCode, sslRequestCode} {
		var got [2]string
		for i, port := range []int{c.Port, g.port} {
			conn := dialRaw(t, port)
			if _, err := conn.Write(requestPacket(sslRequestCode)); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 1)
			if _, err := io.ReadFull(conn, b); err != nil || b[0] != 'S' {
				t.Fatalf("port %d: SSLRequest answered %q, %v", port, b, err)
			}
			tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true})
			if _, err := tc.Write(requestPacket(code)); err != nil {
				t.Fatal(err)
			}
			got[i] = fatalOf(t, readRawMessage(t, tc))
		}
		if got[0] != got[1] {
			t.Errorf("request %d inside TLS: gateway answered %q, PostgreSQL %q", code, got[1], got[0])
		}
	}
}

// One GSSENCRequest is answered 'N'; a second is refused as PostgreSQL's
// ProcessStartupPacket refuses it (gss_done), instead of answering for ever.
// The same for a second SSLRequest after an 'N'.
func TestOneEncryptionRequestEach(t *testing.T) {
	c := pgtest.Require(t)
	g := startGateway(t, backendConfig(c, backend.TLSDisable))
	for _, tt := range []struct {
		code uint32
		want string
	}{
		{gssencRequestCode, "FATAL 0A000 unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0"},
		{sslRequestCode, "FATAL 0A000 unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0"},
	} {
		conn := dialRaw(t, g.port)
		if _, err := conn.Write(append(requestPacket(tt.code), requestPacket(tt.code)...)); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(conn, b); err != nil || b[0] != 'N' {
			t.Fatalf("first request %d answered %q, %v; want N", tt.code, b, err)
		}
		if got := fatalOf(t, readRawMessage(t, conn)); got != tt.want {
			t.Errorf("second request %d: %q, want %q", tt.code, got, tt.want)
		}
	}
	// GSSENC then SSL, each once, is fine (libpq does this with gssencmode=prefer).
	conn := dialRaw(t, g.port)
	pkt := append(requestPacket(gssencRequestCode), requestPacket(sslRequestCode)...)
	pkt = append(pkt, startupPacket(3<<16, "user", pgtest.UserSCRAM, "database", pgtest.Database)...)
	if _, err := conn.Write(pkt); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 2)
	if _, err := io.ReadFull(conn, b); err != nil || string(b) != "NN" {
		t.Fatalf("GSSENCRequest then SSLRequest answered %q, %v; want NN", b, err)
	}
	if msg := readRawMessage(t, conn); msg[0] != 'R' {
		t.Errorf("then %q, want an authentication request", msg[0])
	}
}

// A user name with a double quote is quoted as PostgreSQL quotes it, with
// nothing escaped: the same message as a direct connection, also when the
// gateway checks the password itself (GATEKEEPER_CLIENT_AUTH_FILE).
func TestNamesQuotedAsPostgreSQL(t *testing.T) {
	c := pgtest.Require(t)
	file := writeAuthFile(t, fmt.Sprintf("%q %q", pgtest.UserSCRAM, pgtest.PassSCRAM))
	g := startGateway(t, backendConfig(c, backend.TLSDisable), func(w *wire.Config) { w.ClientAuthFile = file })
	user := `we"ird user`
	var got [2]string
	for i, port := range []int{c.Port, g.port} {
		cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s password=wrong sslmode=disable", port, pgtest.Database))
		if err != nil {
			t.Fatal(err)
		}
		cfg.User = user
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = pgconn.ConnectConfig(ctx, cfg)
		cancel()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			t.Fatalf("port %d: %v, want a server error", port, err)
		}
		got[i] = pgErr.Severity + " " + pgErr.Code + " " + pgErr.Message
	}
	if got[0] != got[1] {
		t.Errorf("gateway answered %q, PostgreSQL %q", got[1], got[0])
	}
}
