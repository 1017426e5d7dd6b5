package wire_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
	"github.com/querycop/querycop/pool"
	"github.com/querycop/querycop/wire"
)

// Integration tests of pooling through the gateway: every test starts its
// own gateway (plaintext to the backend, which keeps them fast) in front of
// the shared cluster, except the restart test, which has a cluster of its own.

// pooledConfig is testPoolConfig changed by adjust.
func pooledConfig(adjust func(*pool.Config)) pool.Config {
	c := testPoolConfig()
	adjust(&c)
	return c
}

// dial is g.connect without a *testing.T, for use from goroutines.
func (g *gateway) dial(ctx context.Context, user, password string, extra ...string) (*pgconn.PgConn, error) {
	cs := fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable connect_timeout=20 %s",
		g.port, user, pgtest.Database, strings.Join(extra, " "))
	if password != "" {
		cs += " password=" + password
	}
	cfg, err := pgconn.ParseConfig(cs)
	if err != nil {
		return nil, err
	}
	return pgconn.ConnectConfig(ctx, cfg)
}

// query runs sql and returns the first column of the first row (of the
// last statement that returns rows).
var query = testkit.Query

// mustQuery is query for the test goroutine.
func mustQuery(t *testing.T, c *pgconn.PgConn, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := query(ctx, c, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// waitIdle waits until no connection of user's pools is in use: a client's
// Close returns before the gateway has released its backend.
func waitIdle(t *testing.T, g *gateway, user string) {
	t.Helper()
	waitFor(t, 5*time.Second, "every backend of "+user+" to be released", func() (bool, string) {
		st, _ := userStats(g, user)
		return st.InUse == 0, fmt.Sprintf("%d in use", st.InUse)
	})
}

// sqlState is the shared helper, under the name these tests use.
var sqlState = testkit.SQLState

// observer is a direct connection to cluster c (not through any gateway),
// for looking at pg_stat_activity.
func observer(t *testing.T, c *pgtest.Cluster) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, c.ConnString(pgtest.UserSCRAM, pgtest.PassSCRAM, pgtest.Database))
	if err != nil {
		t.Fatalf("observer connection to the cluster: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// backendCount is how many server processes user has, the observer's own
// excluded.
func backendCount(ctx context.Context, obs *pgconn.PgConn, user string) (int, error) {
	v, err := query(ctx, obs, fmt.Sprintf(
		"select count(*) from pg_stat_activity where usename = '%s' and pid <> pg_backend_pid()", user))
	if err != nil {
		return 0, err
	}
	var n int
	_, err = fmt.Sscan(v, &n)
	return n, err
}

func mustBackendCount(t *testing.T, obs *pgconn.PgConn, user string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := backendCount(ctx, obs, user)
	if err != nil {
		t.Fatalf("counting backends of %s: %v", user, err)
	}
	return n
}

// userStats adds up the stats of every pool of user (one per credential).
func userStats(g *gateway, user string) (s pool.Stats, pools int) {
	s.User = user
	s.Closed = map[string]int64{}
	for _, st := range g.pools.Stats() {
		if st.User != user {
			continue
		}
		pools++
		s.Size = st.Size
		s.Total += st.Total
		s.Idle += st.Idle
		s.InUse += st.InUse
		s.Constructing += st.Constructing
		s.Waiting += st.Waiting
		s.Clients += st.Clients
		s.Acquires += st.Acquires
		s.AcquireTimeouts += st.AcquireTimeouts
		s.Created += st.Created
		s.Retired += st.Retired
		s.DialFailures += st.DialFailures
		s.Rollbacks += st.Rollbacks
		s.OldestAge = max(s.OldestAge, st.OldestAge)
		for k, v := range st.Closed {
			s.Closed[k] += v
		}
	}
	return s, pools
}

// waitFor polls cond every 20ms until it holds, for at most timeout; on
// timeout it reports an error with cond's last description.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for i := 0; ; i++ {
		ok, state := cond()
		if ok {
			return true
		}
		if time.Now().After(deadline) || i >= 10000 {
			t.Errorf("waited %s for %s; last state: %s", timeout, what, state)
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitNoBackends waits for the backends of user left by earlier tests to exit.
func waitNoBackends(t *testing.T, obs *pgconn.PgConn, user string) {
	t.Helper()
	if !waitFor(t, 10*time.Second, "earlier tests' "+user+" backends to exit", func() (bool, string) {
		n := mustBackendCount(t, obs, user)
		return n == 0, fmt.Sprintf("%d backends", n)
	}) {
		t.FailNow()
	}
}

// sampleBackends counts user's backends on the server every 20ms until the
// returned stop is called, which gives the most seen and the samples taken.
func sampleBackends(obs *pgconn.PgConn, user string) (stop func() (most, samples int, err error)) {
	quit := make(chan struct{})
	done := make(chan struct{})
	var most, samples int
	var err error
	go func() {
		defer close(done)
		for i := 0; i < 100000; i++ {
			select {
			case <-quit:
				return
			case <-time.After(20 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			var n int
			n, err = backendCount(ctx, obs, user)
			cancel()
			if err != nil {
				return
			}
			most, samples = max(most, n), samples+1
		}
	}()
	return func() (int, int, error) {
		close(quit)
		<-done
		return most, samples, err
	}
}

// session connects through g, runs sql n times (each must return want when
// want is not empty) and disconnects.
func session(ctx context.Context, g *gateway, sql, want string, n int) error {
	c, err := g.dial(ctx, pgtest.UserSCRAM, pgtest.PassSCRAM)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer c.Close(context.Background())
	for i := 0; i < n; i++ {
		got, err := query(ctx, c, sql)
		if err != nil {
			return fmt.Errorf("query %d of %q: %w", i, sql, err)
		}
		if want != "" && got != want {
			return fmt.Errorf("query %d of %q = %q, want %q", i, sql, got, want)
		}
	}
	return nil
}

// 1 and 12: a pool of 5 serves 40 concurrent clients, the server never sees
// more than 5 backends, and nothing is left behind when they are gone.
func TestPoolMoreClientsThanSize(t *testing.T) {
	c := pgtest.Require(t)
	goroutinesBefore := runtime.NumGoroutine()
	obs := observer(t, c)
	waitNoBackends(t, obs, pgtest.UserSCRAM)
	g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), pooledConfig(func(p *pool.Config) { p.Size = 5 }))

	const clients, queries = 40, 3
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var errs testkit.ErrorLog
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := session(ctx, g, "select pg_sleep(0.05)", "", queries); err != nil {
				errs.Add(err)
			}
		}()
	}

	// Sample the server's view until the clients are done.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	maxBackends, maxTotal, samples := 0, 0, 0
	var sampleErr error
sampling:
	for i := 0; i < 100000; i++ {
		select {
		case <-done:
			break sampling
		case <-ctx.Done():
			break sampling
		default:
		}
		n, err := backendCount(ctx, obs, pgtest.UserSCRAM)
		if err != nil {
			sampleErr = err
			break
		}
		st, _ := userStats(g, pgtest.UserSCRAM)
		maxBackends, maxTotal = max(maxBackends, n), max(maxTotal, st.Total)
		samples++
		time.Sleep(5 * time.Millisecond)
	}
	<-done
	if sampleErr != nil {
		t.Fatalf("observing pg_stat_activity: %v", sampleErr)
	}
	if errs.Count() > 0 {
		t.Errorf("clients failed: %s", errs.String())
	}
	t.Logf("%d samples: at most %d u_scram backends on the server, pool total at most %d", samples, maxBackends, maxTotal)
	if maxBackends > 5 || maxTotal > 5 {
		t.Errorf("POOL_SIZE=5 exceeded: %d backends on the server, pool total %d", maxBackends, maxTotal)
	}
	if maxBackends == 0 {
		t.Errorf("the observer never saw a backend: the sampling is broken")
	}
	st, _ := userStats(g, pgtest.UserSCRAM)
	if st.Acquires != clients {
		t.Errorf("pool acquires = %d, want %d (one per session)", st.Acquires, clients)
	}

	// 12: no leaks once every client is gone.
	waitFor(t, 5*time.Second, "the pool to have no connection in use and no client", func() (bool, string) {
		st, _ := userStats(g, pgtest.UserSCRAM)
		return st.InUse == 0 && st.Clients == 0, fmt.Sprintf("in use %d, clients %d", st.InUse, st.Clients)
	})
	// The gateway itself keeps a few goroutines (Serve, the janitor).
	waitFor(t, 5*time.Second, "goroutines to return to the level before the test", func() (bool, string) {
		n := runtime.NumGoroutine()
		return n <= goroutinesBefore+5, fmt.Sprintf("%d goroutines, %d before the test", n, goroutinesBefore)
	})
	if t.Failed() {
		buf := make([]byte, 1<<20)
		t.Logf("goroutines:\n%s", buf[:runtime.Stack(buf, true)])
	}
}

// 2: clients that say nothing after start-up hold no backend.
func TestIdleClientsHoldNoBackend(t *testing.T) {
	c := pgtest.Require(t)
	obs := observer(t, c)
	waitNoBackends(t, obs, pgtest.UserSCRAM)
	g := startPooledGateway(t, backendConfig(c, backend.TLSDisable),
		pooledConfig(func(p *pool.Config) { p.Size, p.MinIdle = 5, 0 }),
		func(w *wire.Config) { w.MaxClientConn = 1100 })

	const clients, parallel = 1000, 50
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	conns := make([]*pgconn.PgConn, clients)
	t.Cleanup(func() {
		for _, cn := range conns {
			if cn != nil {
				cn.Close(context.Background())
			}
		}
	})
	start := time.Now()
	var errs testkit.ErrorLog
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range conns {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			cn, err := g.dial(ctx, pgtest.UserSCRAM, pgtest.PassSCRAM)
			if err != nil {
				errs.Add(err)
				return
			}
			conns[i] = cn
		}()
	}
	wg.Wait()
	t.Logf("%d clients connected in %s", clients, time.Since(start).Round(time.Millisecond))
	if errs.Count() > 0 {
		t.Fatalf("connecting idle clients: %s", errs.String())
	}

	st, pools := userStats(g, pgtest.UserSCRAM)
	if pools != 1 || st.Clients != clients {
		t.Errorf("%d pools with %d clients, want 1 pool with %d", pools, st.Clients, clients)
	}
	if st.Total > 1 || st.Created > 1 {
		t.Errorf("pool has %d connections (%d created) for %d idle clients, want at most 1 (the credential check)", st.Total, st.Created, clients)
	}
	if n := mustBackendCount(t, obs, pgtest.UserSCRAM); n > 1 {
		t.Errorf("the server has %d u_scram backends for %d idle clients, want at most 1", n, clients)
	}
	// The clients are real: one of them can still talk.
	if got := queryValue(t, conns[clients/2], "select 1"); got != "1" {
		t.Errorf("select 1 = %q", got)
	}

	start = time.Now()
	for i, cn := range conns {
		cn.Close(ctx)
		conns[i] = nil
	}
	waitFor(t, 20*time.Second, "every client to leave the pool", func() (bool, string) {
		st, _ := userStats(g, pgtest.UserSCRAM)
		return st.Clients == 0 && st.InUse == 0, fmt.Sprintf("%d clients, %d in use", st.Clients, st.InUse)
	})
	t.Logf("%d clients closed in %s", clients, time.Since(start).Round(time.Millisecond))
}

// 3: a backend handed to the next session keeps nothing of the previous one.
func TestReuseDoesNotLeakState(t *testing.T) {
	c := pgtest.Require(t)
	g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), pooledConfig(func(p *pool.Config) { p.Size = 1 }))

	s1 := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	pid := queryValue(t, s1, "select pg_backend_pid()")
	for _, sql := range []string{
		"create temp table t(x int)",
		"set statement_timeout = '1234ms'",
		"prepare p as select 1",
		"select pg_advisory_lock(42)",
		"listen chan1",
	} {
		mustQuery(t, s1, sql)
	}
	// The state is there, so its absence below means something.
	for sql, want := range map[string]string{
		"select to_regclass('pg_temp.t') is null":                   "f",
		"show statement_timeout":                                    "1234ms",
		"select count(*) from pg_prepared_statements":               "1",
		"select count(*) from pg_locks where locktype = 'advisory'": "1",
		"select count(*) from pg_listening_channels()":              "1",
	} {
		if got := queryValue(t, s1, sql); got != want {
			t.Fatalf("session 1: %s = %q, want %q", sql, got, want)
		}
	}
	s1.Close(context.Background())

	s2 := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	if got := queryValue(t, s2, "select pg_backend_pid()"); got != pid {
		t.Fatalf("session 2 got backend %s, want %s (POOL_SIZE=1): nothing was reused", got, pid)
	}
	for _, tt := range []struct{ sql, want string }{
		{"select to_regclass('pg_temp.t') is null", "t"},
		{"select count(*) from pg_class where relname = 't' and relpersistence = 't'", "0"},
		{"show statement_timeout", "0"},
		{"select count(*) from pg_prepared_statements", "0"},
		{"select count(*) from pg_locks where locktype = 'advisory'", "0"},
		{"select count(*) from pg_listening_channels()", "0"},
	} {
		if got := queryValue(t, s2, tt.sql); got != tt.want {
			t.Errorf("session 2 (same backend): %s = %q, want %q: state leaked from session 1", tt.sql, got, tt.want)
		}
	}
}

// 4: a client's start-up parameters are in force on the pooled backend,
// and gone for the next client.
func TestStartupParams(t *testing.T) {
	c := pgtest.Require(t)
	obs := observer(t, c)
	defaultTZ := queryValue(t, obs, "show timezone")
	g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), pooledConfig(func(p *pool.Config) { p.Size = 1 }))

	s1 := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM,
		"application_name=myapp", "TimeZone=America/New_York",
		"options='-c statement_timeout=1500 -c search_path=myschema,public'")
	for name, want := range map[string]string{"application_name": "myapp", "TimeZone": "America/New_York"} {
		if got := s1.ParameterStatus(name); got != want {
			t.Errorf("ParameterStatus %s = %q, want %q", name, got, want)
		}
	}
	pid := queryValue(t, s1, "select pg_backend_pid()")
	for _, tt := range []struct{ sql, want string }{
		{"show application_name", "myapp"},
		{"show timezone", "America/New_York"},
		{"select replace(current_setting('search_path'), ' ', '')", "myschema,public"},
		{"show statement_timeout", "1500ms"},
	} {
		if got := queryValue(t, s1, tt.sql); got != tt.want {
			t.Errorf("%s = %q, want %q", tt.sql, got, tt.want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := query(ctx, s1, "select pg_sleep(3)"); sqlState(err) != "57014" {
		t.Errorf("select pg_sleep(3) with statement_timeout=1500: got %v, want SQLSTATE 57014", err)
	}
	if got := queryValue(t, s1, "select 1"); got != "1" {
		t.Errorf("after the timeout: select 1 = %q", got)
	}
	s1.Close(context.Background())

	s2 := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	if got := queryValue(t, s2, "select pg_backend_pid()"); got != pid {
		t.Fatalf("second client got backend %s, want %s (POOL_SIZE=1)", got, pid)
	}
	if got := s2.ParameterStatus("application_name"); got != "" {
		t.Errorf("second client: ParameterStatus application_name = %q, want empty", got)
	}
	if got := s2.ParameterStatus("TimeZone"); got != defaultTZ {
		t.Errorf("second client: ParameterStatus TimeZone = %q, want the server default %q", got, defaultTZ)
	}
	for _, tt := range []struct{ sql, want string }{
		{"show statement_timeout", "0"},
		{"show application_name", ""},
		{"show timezone", defaultTZ},
		{"show search_path", `"$user", public`},
	} {
		if got := queryValue(t, s2, tt.sql); got != tt.want {
			t.Errorf("second client on the same backend: %s = %q, want %q", tt.sql, got, tt.want)
		}
	}
}

// 5: connections are retired and replaced while clients keep working, and
// no session is cut.
func TestRetirementUnderLoad(t *testing.T) {
	c := pgtest.Require(t)
	obs := observer(t, c)
	waitNoBackends(t, obs, pgtest.UserSCRAM)
	const lifetime = 2 * time.Second
	g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), pooledConfig(func(p *pool.Config) {
		p.Size, p.MaxConnLifetime, p.LifetimeJitter = 5, lifetime, nil
	}))

	const clients, duration, maxSessions = 20, 15 * time.Second, 400
	ctx, cancel := context.WithTimeout(context.Background(), duration+30*time.Second)
	defer cancel()
	deadline := time.Now().Add(duration)
	var errs testkit.ErrorLog
	var sessions, queries atomic.Int64
	var pidsMu sync.Mutex
	pids := map[string]bool{}
	var maxAge atomic.Int64
	var maxTotal atomic.Int64
	var overMu sync.Mutex
	var over string // the first snapshot of a pool above its size
	stopSampling := sampleBackends(obs, pgtest.UserSCRAM)
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < maxSessions && time.Now().Before(deadline); i++ {
				err := func() error {
					cn, err := g.dial(ctx, pgtest.UserSCRAM, pgtest.PassSCRAM)
					if err != nil {
						return fmt.Errorf("connect: %w", err)
					}
					defer cn.Close(context.Background())
					pid, err := query(ctx, cn, "select pg_backend_pid()")
					if err != nil {
						return err
					}
					pidsMu.Lock()
					pids[pid] = true
					pidsMu.Unlock()
					for j, n := 0, 10+mathrand.IntN(41); j < n; j++ {
						if got, err := query(ctx, cn, "select 1"); err != nil || got != "1" {
							return fmt.Errorf("query %d on backend %s: %q, %v", j, pid, got, err)
						}
						queries.Add(1)
					}
					return nil
				}()
				sessions.Add(1)
				if err != nil {
					errs.Add(err)
				}
				st, _ := userStats(g, pgtest.UserSCRAM)
				if age := int64(st.OldestAge); age > maxAge.Load() {
					maxAge.Store(age)
				}
				if total := int64(st.Total); total > maxTotal.Load() {
					maxTotal.Store(total)
				}
				if st.Total > 5 {
					overMu.Lock()
					if over == "" {
						over = fmt.Sprintf("total %d = idle %d + in use %d + constructing %d; created %d, closed %v",
							st.Total, st.Idle, st.InUse, st.Constructing, st.Created, st.Closed)
					}
					overMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	mostBackends, samples, sampleErr := stopSampling()
	if sampleErr != nil {
		t.Errorf("sampling pg_stat_activity: %v", sampleErr)
	}
	t.Logf("%d samples: at most %d u_scram backends on the server; pool total at most %d", samples, mostBackends, maxTotal.Load())
	if mostBackends > 5 || maxTotal.Load() > 5 {
		t.Errorf("POOL_SIZE=5 exceeded while connections were retired: %d backends on the server, pool total %d; first snapshot above 5: %s", mostBackends, maxTotal.Load(), over)
	}

	st, _ := userStats(g, pgtest.UserSCRAM)
	t.Logf("%d sessions, %d queries, %d backends seen; created %d, retired %d, closed %v, oldest connection seen %s",
		sessions.Load(), queries.Load(), len(pids), st.Created, st.Retired, st.Closed, time.Duration(maxAge.Load()).Round(time.Millisecond))
	if errs.Count() > 0 {
		t.Errorf("sessions failed or were cut: %s", errs.String())
	}
	if st.Created <= 5 || len(pids) <= 5 {
		t.Errorf("created %d connections, %d distinct backends: no replacement happened", st.Created, len(pids))
	}
	if st.Retired+st.Closed["lifetime"] == 0 || st.Closed["lifetime"] == 0 {
		t.Errorf("no connection was retired for its lifetime (retired %d, closed %v)", st.Retired, st.Closed)
	}
	if st.Total > 5 {
		t.Errorf("pool total %d > POOL_SIZE 5", st.Total)
	}
	// A connection outlives its lifetime by at most one session (short here).
	if age := time.Duration(maxAge.Load()); age > lifetime+5*time.Second {
		t.Errorf("a connection was %s old, lifetime %s", age, lifetime)
	}
}

// 6: the gateway recovers by itself from a backend restart.
func TestBackendRestartDuringTraffic(t *testing.T) {
	pgtest.Require(t)
	c2, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c2.Stop)
	g := startPooledGateway(t, backendConfig(c2, backend.TLSDisable), pooledConfig(func(p *pool.Config) { p.Size = 5 }))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	first := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	startedBefore := queryValue(t, first, "select pg_postmaster_start_time()")
	first.Close(ctx)

	var ok atomic.Int64
	var errs testkit.ErrorLog
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000; i++ {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				if err := session(ctx, g, "select 1", "1", 5); err != nil {
					errs.Add(err)
					time.Sleep(50 * time.Millisecond)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	stopLoops := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoops()
	waitFor(t, 20*time.Second, "traffic to flow", func() (bool, string) {
		return ok.Load() >= 20, fmt.Sprintf("%d sessions ok, %s", ok.Load(), errs.String())
	})
	if errs.Count() > 0 {
		t.Errorf("sessions failed before the restart: %s", errs.String())
	}
	okBefore := ok.Load()
	if err := c2.Restart("fast"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	stopLoops()
	t.Logf("in-flight traffic: %d sessions ok before the restart, %d in all; %s", okBefore, ok.Load(), errs.String())

	// New clients succeed again, without restarting the gateway.
	start := time.Now()
	var lastErr error
	recovered := false
	for i := 0; i < 200 && time.Since(start) < 20*time.Second; i++ {
		if lastErr = session(ctx, g, "select 1", "1", 1); lastErr == nil {
			recovered = true
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !recovered {
		t.Fatalf("no client succeeded within 20s of the restart; last error: %v", lastErr)
	}
	t.Logf("recovered %s after the restart", time.Since(start).Round(time.Millisecond))
	for i := range 10 {
		if err := session(ctx, g, "select 1", "1", 3); err != nil {
			t.Errorf("session %d after recovery: %v", i, err)
		}
	}
	after := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	if got := queryValue(t, after, "select pg_postmaster_start_time()"); got == startedBefore {
		t.Errorf("postmaster start time unchanged (%s): the server was not restarted", got)
	}
	st, _ := userStats(g, pgtest.UserSCRAM)
	t.Logf("pool after the restart: total %d, created %d, closed %v", st.Total, st.Created, st.Closed)
}

// 7: a client that vanishes in a transaction holding a row lock leaves
// neither the lock nor its transaction to anyone.
func TestKilledClientReleasesLocks(t *testing.T) {
	c := pgtest.Require(t)
	obs := observer(t, c)
	mustQuery(t, obs, "drop table if exists locktest; create table locktest(id int primary key, v int); insert into locktest values (1, 0); select 1")
	t.Cleanup(func() { obs.Exec(context.Background(), "drop table if exists locktest").ReadAll() })

	check := func(t *testing.T, g *gateway, want string) {
		t.Helper()
		b := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
		if got := queryValue(t, b, "select (now() = statement_timestamp() and txid_current_if_assigned() is null)::text"); got != "true" {
			t.Errorf("client B starts inside a stale transaction (now() = statement_timestamp() and no xid: %s)", got)
		}
		mustQuery(t, b, "set lock_timeout = '5s'")
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		got, err := query(ctx, b, "update locktest set v = v + 1 where id = 1 returning v")
		if err != nil {
			t.Fatalf("client B's update: %v (the row lock of the killed client is still held)", err)
		}
		if got != want {
			t.Errorf("v = %s after B's update, want %s: the killed client's update was committed", got, want)
		}
	}

	t.Run("idle in transaction", func(t *testing.T) {
		g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), pooledConfig(func(p *pool.Config) { p.Size = 1 }))
		a := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
		mustQuery(t, a, "begin; update locktest set v = v + 1 where id = 1")
		if got := queryValue(t, obs, "select count(*) from pg_stat_activity where usename = 'u_scram' and state = 'idle in transaction'"); got != "1" {
			t.Fatalf("%s sessions idle in transaction, want 1 (client A)", got)
		}
		a.Conn().Close()
		check(t, g, "1")
		st, _ := userStats(g, pgtest.UserSCRAM)
		if st.Rollbacks != 1 {
			t.Errorf("rollbacks on release = %d, want 1", st.Rollbacks)
		}
	})

	t.Run("mid-query", func(t *testing.T) {
		g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), pooledConfig(func(p *pool.Config) { p.Size = 2 }))
		a := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
		mustQuery(t, a, "begin; update locktest set v = v + 1 where id = 1")
		aDone := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			_, err := query(ctx, a, "select pg_sleep(30)")
			aDone <- err
		}()
		const running = "select count(*) from pg_stat_activity where state = 'active' and query = 'select pg_sleep(30)'"
		waitFor(t, 10*time.Second, "client A's query to run", func() (bool, string) {
			got := queryValue(t, obs, running)
			return got == "1", got + " running"
		})
		a.Conn().Close()
		if err := <-aDone; err == nil {
			t.Errorf("client A's query succeeded after its socket was closed")
		}
		// v is 1 after the first subtest.
		check(t, g, "2")
		waitFor(t, 10*time.Second, "the killed client's backend to be closed", func() (bool, string) {
			st, _ := userStats(g, pgtest.UserSCRAM)
			got := queryValue(t, obs, running)
			return st.Closed["client-gone"] == 1 && got == "0", fmt.Sprintf("closed %v, %s pg_sleep(30) running", st.Closed, got)
		})
	})
}

// 8: a client that cannot get a backend within AcquireTimeout is told why.
func TestAcquireTimeout(t *testing.T) {
	c := pgtest.Require(t)
	g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), pooledConfig(func(p *pool.Config) {
		p.Size, p.AcquireTimeout = 1, 500*time.Millisecond
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	a := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	mustQuery(t, a, "begin; select 1")
	b, err := g.dial(ctx, pgtest.UserSCRAM, pgtest.PassSCRAM)
	if err != nil {
		t.Fatalf("client B's start-up (no backend needed yet): %v", err)
	}
	defer b.Close(ctx)
	_, err = query(ctx, b, "select 1")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" || !strings.Contains(pgErr.Message, "GATEKEEPER_POOL_SIZE=1") {
		t.Fatalf("client B: got %v, want SQLSTATE 53300 mentioning GATEKEEPER_POOL_SIZE=1", err)
	}
	if pgErr.Severity != "FATAL" {
		t.Errorf("client B: severity %s, want FATAL", pgErr.Severity)
	}
	st, _ := userStats(g, pgtest.UserSCRAM)
	if st.AcquireTimeouts != 1 {
		t.Errorf("acquire timeouts = %d, want 1", st.AcquireTimeouts)
	}
	if got := queryValue(t, a, "select 2"); got != "2" {
		t.Errorf("client A after B's timeout: %q", got)
	}

	a.Close(ctx)
	waitFor(t, 5*time.Second, "client A's backend to be back in the pool", func() (bool, string) {
		st, _ := userStats(g, pgtest.UserSCRAM)
		return st.InUse == 0 && st.Idle == 1, fmt.Sprintf("in use %d, idle %d", st.InUse, st.Idle)
	})
	cc := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	if got := queryValue(t, cc, "select 3"); got != "3" {
		t.Errorf("client C: %q", got)
	}
}

// 9: clients beyond MaxClientConn are refused, and room frees up.
func TestMaxClientConn(t *testing.T) {
	c := pgtest.Require(t)
	g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), testPoolConfig(),
		func(w *wire.Config) { w.MaxClientConn = 3 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var held []*pgconn.PgConn
	for range 3 {
		held = append(held, g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM))
	}
	queryValue(t, held[0], "select 1")
	_, err := g.dial(ctx, pgtest.UserSCRAM, pgtest.PassSCRAM)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" || !strings.Contains(pgErr.Message, "too many clients") {
		t.Fatalf("4th client: got %v, want SQLSTATE 53300 too many clients", err)
	}

	held[0].Close(ctx)
	var lastErr error
	var admitted *pgconn.PgConn
	for i := 0; i < 100 && admitted == nil; i++ {
		if admitted, lastErr = g.dial(ctx, pgtest.UserSCRAM, pgtest.PassSCRAM); lastErr != nil {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if admitted == nil {
		t.Fatalf("no new client admitted after one left: %v", lastErr)
	}
	defer admitted.Close(ctx)
	for _, cn := range append(held[1:], admitted) {
		if got := queryValue(t, cn, "select 1"); got != "1" {
			t.Errorf("select 1 = %q", got)
		}
	}
}

// 10: pass-through mode checks a credential with the server once per
// AuthCacheTTL, never admits a wrong one, and notices a password change.
func TestCredentialCache(t *testing.T) {
	c := pgtest.Require(t)

	t.Run("reuse within TTL", func(t *testing.T) {
		g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), pooledConfig(func(p *pool.Config) { p.AuthCacheTTL = time.Minute }))
		first := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
		pid := queryValue(t, first, "select pg_backend_pid()")
		first.Close(context.Background())
		waitIdle(t, g, pgtest.UserSCRAM)
		if st, _ := userStats(g, pgtest.UserSCRAM); st.Created != 1 {
			t.Fatalf("created %d connections for the first client, want 1", st.Created)
		}
		for i := 2; i <= 5; i++ {
			cn := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			if got := queryValue(t, cn, "select pg_backend_pid()"); got != pid {
				t.Errorf("client %d on backend %s, want the pooled %s", i, got, pid)
			}
			cn.Close(context.Background())
			waitIdle(t, g, pgtest.UserSCRAM)
			if st, _ := userStats(g, pgtest.UserSCRAM); st.Created != 1 {
				t.Errorf("after client %d: created %d connections, want 1 (no new backend authentication)", i, st.Created)
			}
		}
		want := `password authentication failed for user "u_scram"`
		for i := range 2 {
			_, err := g.connect(t, pgtest.UserSCRAM, "wrong-password")
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28P01" || pgErr.Message != want {
				t.Errorf("wrong password, attempt %d: got %v, want 28P01 %q", i+1, err, want)
			}
		}
		// Each wrong attempt was checked by the server, and left no pool:
		// a pool exists only for a credential the server accepted.
		st, pools := userStats(g, pgtest.UserSCRAM)
		if refused := g.srv.Stats().Refused["backend-refused"]; refused != 2 || st.Created != 1 || pools != 1 {
			t.Errorf("%d refused by the server, %d created, %d pools; want 2 refused, 1 created, 1 pool", refused, st.Created, pools)
		}
	})

	t.Run("password change", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		const user, oldPass, newPass = "u_rotate", "old-pass", "new-pass"
		if err := c.Exec(ctx, "drop role if exists u_rotate; create role u_rotate login password 'old-pass'"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := c.Exec(context.Background(), "drop role if exists u_rotate"); err != nil {
				t.Logf("dropping u_rotate: %v", err)
			}
		})
		obs := observer(t, c)
		const ttl = 500 * time.Millisecond
		g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), pooledConfig(func(p *pool.Config) { p.AuthCacheTTL = ttl }))
		t.Cleanup(func() {
			for _, s := range []string{oldPass, newPass} {
				if strings.Contains(g.log.String(), s) {
					t.Errorf("the gateway log contains the password %q", s)
				}
			}
		})

		cn := g.mustConnect(t, user, oldPass)
		if got := queryValue(t, cn, "select current_user"); got != user {
			t.Fatalf("current_user = %q", got)
		}
		cn.Close(ctx)
		if err := c.Exec(ctx, "alter role u_rotate password 'new-pass'"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(ttl + 300*time.Millisecond)

		_, err := g.connect(t, user, oldPass)
		want := `password authentication failed for user "u_rotate"`
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28P01" || pgErr.Message != want {
			t.Errorf("old password after the change and the TTL: got %v, want 28P01 %q", err, want)
		}
		cn = g.mustConnect(t, user, newPass)
		if got := queryValue(t, cn, "select current_user"); got != user {
			t.Errorf("new password: current_user = %q", got)
		}
		cn.Close(ctx)
		// Nothing authenticated with the old password is kept.
		waitFor(t, 5*time.Second, "only the new password's connection to remain", func() (bool, string) {
			n := mustBackendCount(t, obs, user)
			st, _ := userStats(g, user)
			return n == 1 && st.Total == 1, fmt.Sprintf("%d u_rotate backends on the server, pool total %d", n, st.Total)
		})
	})
}

// 11: a full driver, with its statement cache, COPY and notifications.
func TestDriverPgx(t *testing.T) {
	c := pgtest.Require(t)
	g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), pooledConfig(func(p *pool.Config) { p.Size = 1 }))
	connString := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable",
		g.port, pgtest.UserSCRAM, pgtest.PassSCRAM, pgtest.Database)
	connect := func(t *testing.T) *pgx.Conn {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, connString)
		if err != nil {
			t.Fatalf("pgx.Connect through the gateway: %v", err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("statement cache across sessions", func(t *testing.T) {
		var pids [2]uint32
		for s := range pids {
			conn := connect(t)
			if err := conn.QueryRow(ctx, "select pg_backend_pid()").Scan(&pids[s]); err != nil {
				t.Fatal(err)
			}
			for i := range 5 {
				var n int
				if err := conn.QueryRow(ctx, "select $1::int + 1", i).Scan(&n); err != nil || n != i+1 {
					t.Fatalf("session %d, query %d: %d, %v", s+1, i, n, err)
				}
			}
			var prepared int
			if err := conn.QueryRow(ctx, "select count(*) from pg_prepared_statements where statement = 'select $1::int + 1'").Scan(&prepared); err != nil || prepared != 1 {
				t.Errorf("session %d: %d named prepared statements for the query (%v), want 1 (pgx's cache)", s+1, prepared, err)
			}
			conn.Close(ctx)
		}
		if pids[0] != pids[1] {
			t.Errorf("the sessions had backends %d and %d, want the same one (POOL_SIZE=1)", pids[0], pids[1])
		}
	})

	t.Run("copy", func(t *testing.T) {
		conn := connect(t)
		if _, err := conn.Exec(ctx, "create temp table copytest(id int, s text)"); err != nil {
			t.Fatal(err)
		}
		var data strings.Builder
		const rows = 10000
		for i := 1; i <= rows; i++ {
			fmt.Fprintf(&data, "%d\trow %d\n", i, i)
		}
		tag, err := conn.PgConn().CopyFrom(ctx, strings.NewReader(data.String()), "copy copytest from stdin")
		if err != nil || tag.RowsAffected() != rows {
			t.Fatalf("COPY FROM STDIN: %v, %v", tag, err)
		}
		var n, sum int64
		if err := conn.QueryRow(ctx, "select count(*), sum(id) from copytest").Scan(&n, &sum); err != nil || n != rows || sum != rows*(rows+1)/2 {
			t.Errorf("after COPY: count %d, sum %d, %v", n, sum, err)
		}
		var out bytes.Buffer
		tag, err = conn.PgConn().CopyTo(ctx, &out, "copy (select id, s from copytest order by id) to stdout")
		if err != nil || tag.RowsAffected() != rows {
			t.Fatalf("COPY TO STDOUT: %v, %v", tag, err)
		}
		if out.String() != data.String() {
			t.Errorf("COPY TO STDOUT returned %d bytes, differing from the %d copied in", out.Len(), data.Len())
		}
		var one int
		if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
			t.Errorf("after COPY: select 1 = %d, %v", one, err)
		}
	})

	t.Run("listen notify", func(t *testing.T) {
		conn := connect(t)
		for _, sql := range []string{"listen c", "notify c, 'x'"} {
			if _, err := conn.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		defer wcancel()
		n, err := conn.WaitForNotification(wctx)
		if err != nil {
			t.Fatalf("WaitForNotification: %v", err)
		}
		if n.Channel != "c" || n.Payload != "x" {
			t.Errorf("notification %s %q, want c \"x\"", n.Channel, n.Payload)
		}
	})
}

// 11: pgbench through the gateway, 20 clients on a pool of 5.
func TestPgbench(t *testing.T) {
	c := pgtest.Require(t)
	bin, err := exec.LookPath("pgbench")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("pgbench is required when CI=true: %v", err)
		}
		t.Skipf("pgbench not found: %v", err)
	}
	env := append(os.Environ(), "PGPASSWORD="+pgtest.PassSCRAM, "PGSSLMODE=disable", "PGGSSENCMODE=disable", "PGCONNECT_TIMEOUT=20")
	run := func(timeout time.Duration, port int, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		args = append(args, "-h", "127.0.0.1", "-p", fmt.Sprint(port), "-U", pgtest.UserSCRAM, pgtest.Database)
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run(120*time.Second, c.Port, "-i", "-s", "1", "-q"); err != nil {
		t.Fatalf("pgbench -i directly against the cluster: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		obs, err := pgconn.Connect(context.Background(), c.ConnString(pgtest.UserSCRAM, pgtest.PassSCRAM, pgtest.Database))
		if err == nil {
			obs.Exec(context.Background(), "drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers").ReadAll()
			obs.Close(context.Background())
		}
	})
	obs := observer(t, c)
	waitNoBackends(t, obs, pgtest.UserSCRAM)
	g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), pooledConfig(func(p *pool.Config) {
		p.Size, p.AcquireTimeout = 5, 30*time.Second
	}))

	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := run(60*time.Second, g.port, "-n", "-S", "-c", "20", "-j", "2", "-T", "5")
		done <- result{out, err}
	}()
	maxBackends := 0
	var res result
sampling:
	for i := 0; i < 100000; i++ {
		select {
		case res = <-done:
			break sampling
		case <-time.After(20 * time.Millisecond):
		}
		maxBackends = max(maxBackends, mustBackendCount(t, obs, pgtest.UserSCRAM))
	}
	if res.err != nil {
		t.Fatalf("pgbench through the gateway: %v\n%s", res.err, res.out)
	}
	if !strings.Contains(res.out, "number of failed transactions: 0") || !regexp.MustCompile(`(?m)^tps = [0-9.]+`).MatchString(res.out) {
		t.Errorf("pgbench output lacks \"number of failed transactions: 0\" or a tps line:\n%s", res.out)
	}
	if maxBackends > 5 {
		t.Errorf("%d u_scram backends on the server during pgbench, POOL_SIZE=5", maxBackends)
	}
	t.Logf("at most %d backends; pgbench:\n%s", maxBackends, res.out)
}

// GATEKEEPER_MAX_POOLS bounds the pools: a client that would need one more
// while every pool has clients is refused with 53300 naming the variable;
// once a pool has no client, it is forgotten to make room.
func TestMaxPools(t *testing.T) {
	c := pgtest.Require(t)
	pcfg := testPoolConfig()
	pcfg.MaxPools = 1
	g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), pcfg)
	first := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	queryValue(t, first, "select 1")
	_, err := g.connect(t, pgtest.UserPassword, pgtest.PassPassword)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" || !strings.Contains(pgErr.Message, "GATEKEEPER_MAX_POOLS (1)") {
		t.Fatalf("a second pool beyond GATEKEEPER_MAX_POOLS=1: %v, want 53300 naming GATEKEEPER_MAX_POOLS", err)
	}
	if n := g.srv.Stats().Refused["max-pools"]; n != 1 {
		t.Errorf("refused for max-pools: %d, want 1", n)
	}
	first.Close(context.Background())
	// The first pool keeps an idle connection but no client: it makes room.
	var second *pgconn.PgConn
	for i := 0; i < 100; i++ {
		if second, err = g.connect(t, pgtest.UserPassword, pgtest.PassPassword); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond) // the first client's session is ending
	}
	if err != nil {
		t.Fatalf("with the first pool unused: %v", err)
	}
	defer second.Close(context.Background())
	if got := queryValue(t, second, "select current_user"); got != pgtest.UserPassword {
		t.Errorf("current_user = %s", got)
	}
	if n := len(g.pools.Stats()); n != 1 {
		t.Errorf("%d pools, want 1", n)
	}
}

// A client that leaves in the middle of a statement that ignores the
// cancel: PostgreSQL's process runs the statement to its end whatever
// the gateway does with its socket. Until it exits it holds a server
// connection of the role, so the pool must not open another beside it:
// the next client waits for it. (Before, the pool replaced it at once,
// and an authenticated client could fill max_connections through a pool
// of one.)
func TestPoolCountsABackendUntilItsProcessExits(t *testing.T) {
	c := pgtest.Require(t)
	obs := observer(t, c)
	for _, mode := range fltModes {
		t.Run(string(mode), func(t *testing.T) {
			g := oneBackendGateway(t, c, mode)
			stubborn := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			// About 1.5 s of sleeps that swallow cancellation.
			const stubbornSQL = `do $$ declare t timestamptz := clock_timestamp(); begin
				while clock_timestamp() < t + interval '1500 ms' loop
					begin perform pg_sleep(0.05); exception when query_canceled then null; end;
				end loop; end $$`
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			go func() { _ = stubborn.Exec(ctx, stubbornSQL).Close() }()
			time.Sleep(200 * time.Millisecond)
			_ = stubborn.Conn().Close() // gone mid-statement, no Terminate

			var peak atomic.Int64
			stop := make(chan struct{})
			polled := make(chan struct{})
			go func() {
				defer close(polled)
				for {
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
					if n, err := backendCount(ctx, obs, pgtest.UserSCRAM); err == nil && int64(n) > peak.Load() {
						peak.Store(int64(n))
					}
				}
			}()
			next := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			start := time.Now()
			if v, err := testkit.Query(ctx, next, "select 'served'"); err != nil || v != "served" {
				t.Errorf("the next client: %q, %v", v, err)
			}
			waited := time.Since(start)
			close(stop)
			<-polled
			if p := peak.Load(); p > 1 {
				t.Errorf("%d server connections of the role at once, GATEKEEPER_POOL_SIZE=1", p)
			}
			if waited < 500*time.Millisecond {
				t.Errorf("the next client was served after %s, before the stubborn statement could have ended", waited)
			}
		})
	}
}

// The same, when the client also queued megabytes of queries behind the
// statement: the gateway's write of them to the busy server is cut short
// when the client leaves, leaving the stream inside a message, where a
// Terminate would only be read as more of that message and the server
// would wait for the rest for ever (the pool held its place for ever: every
// later client got 53300). The pool must be usable again once the
// statement ends.
func TestPoolRecoversFromABackendLeftMidMessage(t *testing.T) {
	c := pgtest.Require(t)
	for _, mode := range fltModes {
		t.Run(string(mode), func(t *testing.T) {
			g := oneBackendGateway(t, c, mode)
			a := rawGateway(t, g)
			stubborn, _ := txQuery(`do $$ declare t timestamptz := clock_timestamp(); begin
				while clock_timestamp() < t + interval '1500 ms' loop
					begin perform pg_sleep(0.05); exception when query_canceled then null; end;
				end loop; end $$`).Encode(nil)
			filler, _ := txQuery("select 1 /* " + strings.Repeat("x", 64<<10) + " */").Encode(nil)
			_ = a.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := a.conn.Write(stubborn); err != nil {
				t.Fatal(err)
			}
			for range 128 { // 8 MiB: more than the sockets on the way hold
				if _, err := a.conn.Write(filler); err != nil {
					break
				}
			}
			a.conn.Close()

			next := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if v, err := testkit.Query(ctx, next, "select 'served'"); err != nil || v != "served" {
				t.Errorf("the next client, once the stubborn statement could end: %q, %v", v, err)
			}
		})
	}
}
