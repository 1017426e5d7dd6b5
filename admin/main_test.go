package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/admin"
	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
	"github.com/querycop/querycop/pool"
	"github.com/querycop/querycop/wire"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Options{TLS: true}, &cluster)
}

// adminKey is the bearer key of the gateways under test: long and odd
// enough that finding it in a response or a log line means it leaked.
const adminKey = "k-admin-7Hq2xv"

// wrongPassword is what a refused client offers; it must not surface either.
const wrongPassword = "wrong-secret-Zp41"

// secrets are every credential the tests use; none may appear in a log
// line, a metric label or an API response.
var secrets = []string{pgtest.PassSCRAM, pgtest.PassMD5, pgtest.PassPassword, wrongPassword, adminKey}

// gateway is an in-process Querycop: the pool port and the admin API.
type gateway struct {
	port  int // pool port
	api   string
	http  *http.Client
	pools *pool.Pools
	srv   *wire.Server
	log   *testkit.LogBuffer
}

func testPoolConfig(adjust func(*pool.Config)) pool.Config {
	cfg := pool.Config{
		Size: 10, MaxConnLifetime: time.Hour, MaxConnIdleTime: 10 * time.Minute,
		AcquireTimeout: 10 * time.Second, ResetQuery: "DISCARD ALL", AuthCacheTTL: time.Minute,
	}
	if adjust != nil {
		adjust(&cfg)
	}
	return cfg
}

// readiness mirrors cmd/querycop's check in pass-through mode: a live
// pooled connection, or else a backend that accepts a connection now.
// effectiveConfig stands in for cmd/querycop's redacted configuration.
var effectiveConfig = map[string]string{
	"ADMIN_API_KEY":               "(set, not shown)",
	"GATEKEEPER_BACKEND_HOST":     "127.0.0.1",
	"GATEKEEPER_BACKEND_PORT":     "5432",
	"GATEKEEPER_POOL_SIZE":        "10",
	"GATEKEEPER_BACKEND_TLS_MODE": "disable",
}

// startGateway runs a pass-through gateway in front of c with its admin API
// on a free loopback port. When the test ends it stops both, and checks
// that no secret reached the log and that no goroutine was left behind.
func startGateway(t *testing.T, c *pgtest.Cluster, pcfg pool.Config, acfg admin.Config, key string) *gateway {
	t.Helper()
	// Goroutines already running (an enclosing test's gateway) are not
	// this gateway's leaks.
	running := querycopGoroutines()
	dialer, err := backend.NewDialer(backend.Config{
		Host: "127.0.0.1", Port: c.Port, TLSMode: backend.TLSDisable, ConnectTimeout: 5 * time.Second,
	}, nil)
	if err != nil {
		t.Fatalf("NewDialer: %v", err)
	}
	logs := &testkit.LogBuffer{}
	log := zerolog.New(logs).Level(zerolog.DebugLevel)
	pools := pool.New(pcfg, dialer, false, log)
	srv, err := wire.NewServer(wire.Config{ListenAddr: "127.0.0.1", LoginTimeout: 5 * time.Second, MaxClientConn: 100}, wire.PoolsOf(pools), false, log)
	if err != nil {
		t.Fatalf("wire.NewServer: %v", err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	acfg.Addr, acfg.Port = "127.0.0.1", 0
	api := admin.NewServer(acfg, key, admin.Deps{
		Pools: pools, Clients: srv, Ready: admin.Readiness(pools, func(ctx context.Context) error { _, err := dialer.Probe(ctx); return err }, nil), Config: effectiveConfig,
	}, log)
	if err := api.Listen(); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	apiDone := make(chan error, 1)
	go func() { apiDone <- api.Serve() }()

	g := &gateway{
		port:  srv.Addr().(*net.TCPAddr).Port,
		api:   "http://" + api.Addr().String(),
		http:  &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{}},
		pools: pools, srv: srv, log: logs,
	}
	t.Cleanup(func() {
		g.http.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := api.Shutdown(ctx); err != nil {
			t.Errorf("admin Shutdown: %v", err)
		}
		if err := <-apiDone; err != nil {
			t.Errorf("admin Serve: %v", err)
		}
		srv.Close()
		if err := <-served; err != nil {
			t.Errorf("wire Serve: %v", err)
		}
		pools.Close()
		out := logs.String()
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("the gateway log contains the secret %q", s)
			}
		}
		// The leak check: every goroutine running querycop code that started
		// with this gateway, other than the test's own, has ended.
		var left []string
		deadline := time.Now().Add(5 * time.Second)
		for {
			left = left[:0]
			for id, stack := range querycopGoroutines() {
				if _, ok := running[id]; !ok {
					left = append(left, stack)
				}
			}
			if len(left) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if len(left) > 0 {
			t.Errorf("%d gateway goroutines left after it stopped:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", out)
		}
	})
	return g
}

// querycopGoroutines returns, by goroutine header ("goroutine 7 [...]:"
// without the state), the stacks of goroutines running querycop code,
// leaving out the calling one and the test framework's.
func querycopGoroutines() map[string]string {
	buf := make([]byte, 4<<20)
	all := strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n")
	out := map[string]string{}
	for _, g := range all[1:] { // the first is the caller
		if strings.Contains(g, "github.com/querycop/querycop/") &&
			!strings.Contains(g, "testing.tRunner") && !strings.Contains(g, "testing.(*M)") {
			id, _, _ := strings.Cut(g, " [")
			out[id] = g
		}
	}
	return out
}

// call sends one request to the admin API, with the bearer key unless key
// is empty, and returns the status and body.
func (g *gateway) call(t *testing.T, method, path, key, body string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, g.api+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := g.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return resp.StatusCode, b
}

// get sends an authorized request, requires 200 and decodes the JSON body
// into v.
func (g *gateway) get(t *testing.T, method, path, body string, v any) {
	t.Helper()
	status, b := g.call(t, method, path, adminKey, body)
	if status != http.StatusOK {
		t.Fatalf("%s %s = %d, want 200; body: %s", method, path, status, b)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s %s: decoding %s: %v", method, path, b, err)
		}
	}
}

type poolsView struct {
	Paused bool         `json:"paused"`
	Pools  []pool.Stats `json:"pools"`
}

// userPool is the /v1/pools entry of appdb and user, zero when absent.
func (g *gateway) userPool(t *testing.T, user string) pool.Stats {
	t.Helper()
	var v poolsView
	g.get(t, "GET", "/v1/pools", "", &v)
	for _, s := range v.Pools {
		if s.Database == pgtest.Database && s.User == user {
			return s
		}
	}
	return pool.Stats{}
}

// scrape reads /metrics with the Prometheus text parser.
func (g *gateway) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	status, b := g.call(t, "GET", "/metrics", adminKey, "")
	if status != http.StatusOK {
		t.Fatalf("GET /metrics = %d; body: %s", status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, b)
	}
	return fams
}

// sample finds the metric of family name whose labels include want.
func sample(fams map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	fam := fams[name]
	if fam == nil {
		return nil
	}
next:
	for _, m := range fam.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		return m
	}
	return nil
}

// value is the gauge or counter value of a sample, -1 when it is missing.
func value(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	m := sample(fams, name, labels)
	switch {
	case m == nil:
		return -1
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	return -1
}

func appdb(user string, kv ...string) map[string]string {
	m := map[string]string{"database": pgtest.Database, "user": user}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// dial opens a client connection through the gateway.
func (g *gateway) dial(ctx context.Context, user, password string) (*pgconn.PgConn, error) {
	cs := fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable connect_timeout=15 password=%s",
		g.port, user, pgtest.Database, password)
	return pgconn.Connect(ctx, cs)
}

func (g *gateway) mustDial(t *testing.T, user, password string) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := g.dial(ctx, user, password)
	if err != nil {
		t.Fatalf("connecting through the gateway as %s: %v", user, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// query and sqlState are the shared helpers, under the names these tests use.
var (
	query    = testkit.Query
	sqlState = testkit.SQLState
)

func mustQuery(t *testing.T, c *pgconn.PgConn, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	v, err := query(ctx, c, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// observer is a superuser connection straight to c, over its Unix socket,
// for reading pg_stat_activity.
func observer(t *testing.T, c *pgtest.Cluster) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	obs, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", c.SocketDir, c.Port))
	if err != nil {
		t.Fatalf("connecting the observer: %v", err)
	}
	t.Cleanup(func() { obs.Close(context.Background()) })
	return obs
}

// backendCount is how many server processes user has, the observer aside.
func backendCount(ctx context.Context, obs *pgconn.PgConn, user string) (int, error) {
	v, err := query(ctx, obs, fmt.Sprintf("select count(*) from pg_stat_activity where usename = '%s' and pid <> pg_backend_pid()", user))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(v)
}

// backends lists user's server processes as "pid:state", ordered by pid.
func backends(t *testing.T, obs *pgconn.PgConn, user string) []string {
	t.Helper()
	v := mustQuery(t, obs, fmt.Sprintf(
		"select coalesce(string_agg(pid || ':' || coalesce(state, ''), ',' order by pid), '') from pg_stat_activity where usename = '%s'", user))
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

// waitFor polls cond every 20ms for at most timeout; on timeout it fails the
// test with cond's last description.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for i := 0; ; i++ {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) || i >= 10000 {
			t.Fatalf("waited %s for %s; last state: %s", timeout, what, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitNoBackends waits for user's server processes left by earlier tests
// to exit.
func waitNoBackends(t *testing.T, obs *pgconn.PgConn, user string) {
	t.Helper()
	waitFor(t, 10*time.Second, "earlier tests' "+user+" backends to exit", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n, err := backendCount(ctx, obs, user)
		if err != nil {
			t.Fatalf("reading pg_stat_activity: %v", err)
		}
		return n == 0, fmt.Sprintf("%d backends", n)
	})
}
