package wire_test

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/wire"
)

// A connection closed before its first byte is a TCP health check (a
// Kubernetes tcpSocket probe, a load balancer): logged at DEBUG and counted
// apart, not as a protocol violation. A connection that sent part of a
// packet still is one.
func TestTCPProbeIsNotAProtocolViolation(t *testing.T) {
	c := pgtest.Require(t)
	g := startGateway(t, backendConfig(c, backend.TLSDisable))
	for range 3 {
		conn, err := net.Dial("tcp", g.addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
	}
	conn, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte{0, 0})
	conn.Close()
	ok, st := false, wire.Stats{}
	for i := 0; i < 200 && !ok; i++ {
		time.Sleep(10 * time.Millisecond)
		st = g.srv.Stats()
		ok = st.Probes == 3 && st.Refused["protocol-violation"] == 1
	}
	if !ok {
		t.Errorf("probes %d, protocol violations %d; want 3 and 1", st.Probes, st.Refused["protocol-violation"])
	}
	for _, line := range strings.Split(g.log.String(), "\n") {
		if strings.Contains(line, "a TCP probe") && !strings.Contains(line, `"level":"debug"`) {
			t.Errorf("probe logged above DEBUG: %s", line)
		}
	}
	if n := strings.Count(g.log.String(), "a TCP probe"); n != 3 {
		t.Errorf("%d probe lines, want 3:\n%s", n, g.log.String())
	}
}

// A change to GATEKEEPER_CLIENT_AUTH_FILE picked up by a login (no SIGHUP)
// is logged, as a SIGHUP reload is.
func TestAuthFileAutomaticReloadIsLogged(t *testing.T) {
	c := pgtest.Require(t)
	file := writeAuthFile(t, fmt.Sprintf(`"%s" "%s"`, pgtest.UserSCRAM, pgtest.PassSCRAM))
	g := startGateway(t, backendConfig(c, backend.TLSDisable), func(w *wire.Config) { w.ClientAuthFile = file })
	g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	const msg = "GATEKEEPER_CLIENT_AUTH_FILE changed on disk: reloaded"
	if strings.Contains(g.log.String(), msg) {
		t.Fatalf("reload logged before any change")
	}
	time.Sleep(1100 * time.Millisecond) // the file is looked at once a second at most
	if err := os.WriteFile(file, []byte(fmt.Sprintf("%q %q\n%q %q\n", pgtest.UserSCRAM, pgtest.PassSCRAM, pgtest.UserPassword, pgtest.PassPassword)), 0o600); err != nil {
		t.Fatal(err)
	}
	g.mustConnect(t, pgtest.UserPassword, pgtest.PassPassword)
	var line string
	for _, l := range strings.Split(g.log.String(), "\n") {
		if strings.Contains(l, msg) {
			line = l
		}
	}
	if !strings.Contains(line, `"level":"info"`) || !strings.Contains(line, `"users":2`) {
		t.Errorf("reload line %q, want an info line with users 2", line)
	}
}
