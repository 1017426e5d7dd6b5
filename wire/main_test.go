package wire_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
	"github.com/querycop/querycop/pool"
	"github.com/querycop/querycop/token"
	"github.com/querycop/querycop/wire"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	// log_connections: the SCRAM tests read which method the server
	// authenticated each login with.
	pgtest.Main(m, pgtest.Options{TLS: true, ExtraConf: []string{"log_connections = on"}}, &cluster)
}

// secrets are every password and token the tests use; none may ever be logged.
var secrets = []string{pgtest.PassSCRAM, pgtest.PassMD5, pgtest.PassPassword, "client-side-secret"}

type gateway struct {
	addr  string
	port  int
	log   *testkit.LogBuffer
	srv   *wire.Server
	pools *pool.Pools
}

// tokenCmd returns a token command running the named script in testdata.
func tokenCmd(t testing.TB, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "testdata", "tokencmd", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func backendConfig(c *pgtest.Cluster, mode backend.TLSMode) backend.Config {
	cfg := backend.Config{
		Host:           "localhost",
		Port:           c.Port,
		TLSMode:        mode,
		ConnectTimeout: 10 * time.Second,
		Token:          token.Config{Timeout: 10 * time.Second, Lifetime: 15 * time.Minute, RefreshMargin: time.Minute, Reuse: true},
	}
	if mode.Verifies() && c.CA != nil {
		cfg.TLSCAFile = c.CA.CertFile
	}
	return cfg
}

// testPoolConfig is the pool configuration tests start from.
func testPoolConfig() pool.Config {
	return pool.Config{
		Size: 10, MaxConnLifetime: time.Hour, MaxConnIdleTime: 10 * time.Minute,
		AcquireTimeout: 10 * time.Second, ResetQuery: "DISCARD ALL", AuthCacheTTL: time.Minute,
	}
}

// testLoginSafety is the tests' token login safety: their tokens last
// seconds, not an hour, and the connect timeout is not waited for.
const testLoginSafety = time.Second

// startGateway runs a gateway in front of the backend described by bcfg and
// checks, when the test ends, that no secret reached its log.
func startGateway(t *testing.T, bcfg backend.Config, adjust ...func(*wire.Config)) *gateway {
	return startPooledGateway(t, bcfg, testPoolConfig(), adjust...)
}

func startPooledGateway(t testing.TB, bcfg backend.Config, pcfg pool.Config, adjust ...func(*wire.Config)) *gateway {
	t.Helper()
	var tokens backend.TokenSource
	if bcfg.Token.Cmd != "" {
		src := token.NewSource(bcfg.Token, token.NewCommand(bcfg.Token))
		src.LoginSafety = testLoginSafety
		t.Cleanup(src.Close)
		tokens = src
	}
	dialer, err := backend.NewDialer(bcfg, tokens)
	if err != nil {
		t.Fatalf("NewDialer: %v", err)
	}
	wcfg := wire.Config{ListenAddr: "127.0.0.1", ListenPort: 0, LoginTimeout: 5 * time.Second, MaxClientConn: 1000}
	for _, f := range adjust {
		f(&wcfg)
	}
	logs := &testkit.LogBuffer{}
	log := zerolog.New(logs).Level(zerolog.TraceLevel)
	pools := pool.New(pcfg, dialer, tokens != nil, log)
	srv, err := wire.NewServer(wcfg, wire.PoolsOf(pools), tokens != nil, log, wire.WithBackendDialer(dialer))
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	g := &gateway{addr: srv.Addr().String(), log: logs, srv: srv, pools: pools}
	fmt.Sscanf(g.addr[strings.LastIndex(g.addr, ":")+1:], "%d", &g.port)
	t.Cleanup(func() {
		srv.Close()
		pools.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		out := logs.String()
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("the gateway log contains the secret %q:\n%s", s, out)
			}
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", out)
		}
	})
	return g
}

// connect opens a client connection through the gateway.
func (g *gateway) connect(t *testing.T, user, password string, extra ...string) (*pgconn.PgConn, error) {
	t.Helper()
	cs := fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable connect_timeout=20 %s",
		g.port, user, pgtest.Database, strings.Join(extra, " "))
	if password != "" {
		cs += " password=" + password
	}
	cfg, err := pgconn.ParseConfig(cs)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return pgconn.ConnectConfig(ctx, cfg)
}

func (g *gateway) mustConnect(t *testing.T, user, password string, extra ...string) *pgconn.PgConn {
	t.Helper()
	c, err := g.connect(t, user, password, extra...)
	if err != nil {
		t.Fatalf("connecting through the gateway as %s: %v", user, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// queryValue runs sql and returns the first column of the first row.
func queryValue(t *testing.T, c *pgconn.PgConn, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if len(res) == 0 || len(res[0].Rows) == 0 {
		t.Fatalf("%s: no rows", sql)
	}
	return string(res[0].Rows[0][0])
}
