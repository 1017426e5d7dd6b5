package admin_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/admin"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
	"github.com/querycop/querycop/pool"
	"github.com/querycop/querycop/wire"
)

// endpoint is one route of the admin API and a body it accepts.
type endpoint struct {
	method, path, body string
	open               bool // served without the key
}

// endpoints is every route, in an order that leaves the pools as they
// were: pause comes before resume.
var endpoints = []endpoint{
	{method: "GET", path: "/healthz", open: true},
	{method: "GET", path: "/readyz", open: true},
	{method: "GET", path: "/metrics"},
	{method: "GET", path: "/v1/pools"},
	{method: "GET", path: "/v1/clients"},
	{method: "GET", path: "/v1/token"},
	{method: "GET", path: "/v1/config"},
	{method: "PUT", path: "/v1/pools/size", body: `{"size": 10}`},
	{method: "POST", path: "/v1/pause"},
	{method: "POST", path: "/v1/resume"},
	{method: "POST", path: "/v1/drain"},
	{method: "GET", path: "/debug/pprof/"},
	{method: "GET", path: "/debug/pprof/profile?seconds=1"},
	{method: "GET", path: "/debug/pprof/trace?seconds=1"},
	{method: "GET", path: "/debug/pprof/cmdline"},
	{method: "GET", path: "/debug/pprof/symbol"},
}

func TestAuth(t *testing.T) {
	c := pgtest.Require(t)
	g := startGateway(t, c, testPoolConfig(nil), admin.Config{}, adminKey)

	for _, ep := range endpoints {
		t.Run(strings.TrimPrefix(ep.method+ep.path, "/"), func(t *testing.T) {
			cases := []struct {
				name, key string
				want      int
			}{
				{"no-key", "", http.StatusUnauthorized},
				{"wrong-key", adminKey + "x", http.StatusUnauthorized},
				{"key-prefix", adminKey[:len(adminKey)-1], http.StatusUnauthorized},
				{"right-key", adminKey, http.StatusOK},
			}
			for _, tc := range cases {
				want := tc.want
				if ep.open {
					want = http.StatusOK
				}
				status, body := g.call(t, ep.method, ep.path, tc.key, ep.body)
				if status != want {
					t.Errorf("%s: %s %s = %d, want %d; body: %s", tc.name, ep.method, ep.path, status, want, body)
				}
				var e struct{ Error string }
				if status == http.StatusUnauthorized && (json.Unmarshal(body, &e) != nil || !strings.Contains(e.Error, "Authorization: Bearer <ADMIN_API_KEY>")) {
					t.Errorf("%s: 401 body does not say how to authenticate: %s", tc.name, body)
				}
			}
			// The scheme's name is case-insensitive (RFC 9110).
			if !ep.open && ep.method == "GET" && !strings.HasPrefix(ep.path, "/debug/pprof/profile") && !strings.HasPrefix(ep.path, "/debug/pprof/trace") {
				for _, scheme := range []string{"bearer", "BEARER", "bEaReR"} {
					req, _ := http.NewRequest(ep.method, g.api+ep.path, nil)
					req.Header.Set("Authorization", scheme+" "+adminKey)
					resp, err := g.http.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						t.Errorf("scheme %q: %s %s = %d, want 200", scheme, ep.method, ep.path, resp.StatusCode)
					}
				}
			}
			// The key goes in a bearer header; any other scheme is refused.
			if !ep.open {
				req, _ := http.NewRequest(ep.method, g.api+ep.path, strings.NewReader(ep.body))
				req.Header.Set("Authorization", "Basic "+adminKey)
				resp, err := g.http.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
					t.Errorf("Basic scheme: %d with WWW-Authenticate %q, want 401 with a challenge",
						resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
				}
			}
		})
	}
	if g.pools.Paused() {
		t.Errorf("pools still paused after POST /v1/resume")
	}

	t.Run("key-unset", func(t *testing.T) {
		g := startGateway(t, c, testPoolConfig(nil), admin.Config{}, "")
		for _, ep := range endpoints {
			for _, key := range []string{"", adminKey} {
				status, body := g.call(t, ep.method, ep.path, key, ep.body)
				want := http.StatusForbidden
				if ep.open {
					want = http.StatusOK
				}
				if status != want {
					t.Errorf("%s %s (key %q) = %d, want %d; body: %s", ep.method, ep.path, key, status, want, body)
				}
				if status == http.StatusForbidden && !strings.Contains(string(body), "ADMIN_API_KEY is unset") {
					t.Errorf("%s %s: 403 body does not say the key is unset: %s", ep.method, ep.path, body)
				}
			}
		}
		if g.pools.Paused() {
			t.Errorf("POST /v1/pause paused the pools although ADMIN_API_KEY is unset")
		}
		if !strings.Contains(g.log.String(), "ADMIN_API_KEY is unset") {
			t.Errorf("no warning logged about the unset key")
		}
	})

	t.Run("metrics-public", func(t *testing.T) {
		g := startGateway(t, c, testPoolConfig(nil), admin.Config{MetricsPublic: true}, adminKey)
		if status, body := g.call(t, "GET", "/metrics", "", ""); status != http.StatusOK || !strings.Contains(string(body), "querycop_paused") {
			t.Errorf("GET /metrics without key = %d, want 200 with the metrics; body: %.200s", status, body)
		}
		for _, ep := range endpoints {
			if ep.open || ep.path == "/metrics" {
				continue
			}
			if status, _ := g.call(t, ep.method, ep.path, "", ep.body); status != http.StatusUnauthorized {
				t.Errorf("%s %s without key = %d with API_METRICS_PUBLIC, want 401", ep.method, ep.path, status)
			}
		}
	})
}

// The admin views agree with what five clients in open transactions and
// one refused client actually did.
func TestViewsMatchTheGateway(t *testing.T) {
	c := pgtest.Require(t)
	g := startGateway(t, c, testPoolConfig(nil), admin.Config{}, adminKey)

	const clients = 5
	pids := map[string]bool{}
	for range clients {
		conn := g.mustDial(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
		pids[mustQuery(t, conn, "begin; select pg_backend_pid()")] = true
	}
	if len(pids) != clients {
		t.Fatalf("%d distinct backend PIDs for %d clients in transactions, want one each", len(pids), clients)
	}

	t.Run("v1/clients", func(t *testing.T) {
		var v struct {
			Clients []wire.ClientInfo `json:"clients"`
		}
		g.get(t, "GET", "/v1/clients", "", &v)
		if len(v.Clients) != clients {
			t.Fatalf("/v1/clients lists %d clients, want %d: %+v", len(v.Clients), clients, v.Clients)
		}
		for _, ci := range v.Clients {
			if ci.User != pgtest.UserSCRAM || ci.Database != pgtest.Database || ci.State != "active" || ci.BackendPID == 0 {
				t.Errorf("client %+v: want user %s, database %s, state active and a backend PID", ci, pgtest.UserSCRAM, pgtest.Database)
			}
			if !pids[strconv.FormatUint(uint64(ci.BackendPID), 10)] {
				t.Errorf("client %d: backend_pid %d is none of the clients' pg_backend_pid() %v", ci.ID, ci.BackendPID, pids)
			}
		}
	})

	t.Run("v1/pools", func(t *testing.T) {
		var v poolsView
		g.get(t, "GET", "/v1/pools", "", &v)
		if len(v.Pools) != 1 || v.Paused {
			t.Fatalf("/v1/pools = %+v, want one pool, not paused", v)
		}
		s := v.Pools[0]
		if s.Database != pgtest.Database || s.User != pgtest.UserSCRAM || s.InUse != clients || s.Clients != clients || s.Size != 10 {
			t.Errorf("pool %+v: want %s/%s, in_use %d, clients %d, size 10", s, s.Database, s.User, clients, clients)
		}
	})

	t.Run("v1/config", func(t *testing.T) {
		_, body := g.call(t, "GET", "/v1/config", adminKey, "")
		var got map[string]string
		if err := json.Unmarshal(body, &got); err != nil || got["GATEKEEPER_POOL_SIZE"] != "10" {
			t.Errorf("/v1/config = %s (%v), want the effective configuration", body, err)
		}
		for _, s := range secrets {
			if strings.Contains(string(body), s) {
				t.Errorf("/v1/config contains the secret %q", s)
			}
		}
	})

	t.Run("v1/token", func(t *testing.T) {
		var v struct {
			Mode   string `json:"mode"`
			Tokens []any  `json:"tokens"`
		}
		g.get(t, "GET", "/v1/token", "", &v)
		if v.Mode != "pass-through" || v.Tokens == nil || len(v.Tokens) != 0 {
			t.Errorf("/v1/token = %+v, want mode pass-through and an empty token list", v)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		fams := g.scrape(t)
		if v := value(fams, "querycop_pool_connections", appdb(pgtest.UserSCRAM, "state", "in_use")); v != clients {
			t.Errorf("querycop_pool_connections{state=in_use} = %v, want %d", v, clients)
		}
		if v := value(fams, "querycop_pool_connections", appdb(pgtest.UserSCRAM, "state", "idle")); v != 0 {
			t.Errorf("querycop_pool_connections{state=idle} = %v, want 0", v)
		}
		if v := value(fams, "querycop_pool_size", appdb(pgtest.UserSCRAM)); v != 10 {
			t.Errorf("querycop_pool_size = %v, want 10", v)
		}
		if v := value(fams, "querycop_pool_clients", appdb(pgtest.UserSCRAM)); v != clients {
			t.Errorf("querycop_pool_clients = %v, want %d", v, clients)
		}
		if v := value(fams, "querycop_clients_connected", nil); v < clients {
			t.Errorf("querycop_clients_connected = %v, want at least %d", v, clients)
		}
		if v := value(fams, "querycop_paused", nil); v != 0 {
			t.Errorf("querycop_paused = %v, want 0", v)
		}
		m := sample(fams, "querycop_pool_acquire_wait_seconds", appdb(pgtest.UserSCRAM))
		if m == nil || m.GetHistogram().GetSampleCount() < clients {
			t.Errorf("querycop_pool_acquire_wait_seconds count = %d, want at least %d", m.GetHistogram().GetSampleCount(), clients)
		}
		for _, dir := range []string{"from_clients", "to_clients"} {
			if v := value(fams, "querycop_relay_bytes_total", map[string]string{"direction": dir}); v <= 0 {
				t.Errorf("querycop_relay_bytes_total{direction=%q} = %v, want > 0", dir, v)
			}
			if v := value(fams, "querycop_relay_messages_total", map[string]string{"direction": dir}); v <= 0 {
				t.Errorf("querycop_relay_messages_total{direction=%q} = %v, want > 0", dir, v)
			}
		}
		for _, name := range []string{"go_goroutines", "go_memstats_alloc_bytes", "process_open_fds"} {
			if fams[name] == nil {
				t.Errorf("%s missing from /metrics", name)
			}
		}
	})

	t.Run("refused-client", func(t *testing.T) {
		before := value(g.scrape(t), "querycop_clients_refused_total", map[string]string{"reason": "backend-refused"})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		conn, err := g.dial(ctx, pgtest.UserSCRAM, wrongPassword)
		if err == nil {
			conn.Close(ctx)
			t.Fatal("a wrong password was accepted")
		}
		if got := sqlState(err); got != "28P01" {
			t.Fatalf("wrong password: %v (SQLSTATE %q), want 28P01", err, got)
		}
		fams := g.scrape(t)
		if after := value(fams, "querycop_clients_refused_total", map[string]string{"reason": "backend-refused"}); after != max(before, 0)+1 {
			t.Errorf("querycop_clients_refused_total{reason=backend-refused} = %v after a refusal, %v before; want one more", after, before)
		}
		// Every label of every sample, the runtime's included.
		for name, fam := range fams {
			for _, m := range fam.GetMetric() {
				for _, l := range m.GetLabel() {
					for _, s := range secrets {
						if strings.Contains(l.GetValue(), s) {
							t.Errorf("%s has label %s=%q containing a secret", name, l.GetName(), l.GetValue())
						}
					}
				}
			}
		}
		// The refused credential's pool is merged into the user's, not shown
		// apart, and the five sessions are untouched.
		if s := g.userPool(t, pgtest.UserSCRAM); s.InUse != clients {
			t.Errorf("after the refusal in_use = %d, want %d", s.InUse, clients)
		}
	})
}

// Resizing at run time under load: the server sees more backends once the
// pool grows, the surplus goes once it shrinks, and no client notices.
func TestResizeUnderLoad(t *testing.T) {
	c := pgtest.Require(t)
	obs := observer(t, c)
	waitNoBackends(t, obs, pgtest.UserSCRAM)
	g := startGateway(t, c, testPoolConfig(func(p *pool.Config) { p.Size = 2 }), admin.Config{}, adminKey)

	t.Run("bad-bodies", func(t *testing.T) {
		for _, body := range []string{
			``, `not json`, `{"size": 0}`, `{"size": -3}`, `{"size": 100001}`, `{"size": "6"}`,
			`{"size": 6, "pool": "appdb"}`, `{"size": 6.5}`, `[6]`,
			// Strict: one object, field names exactly as documented.
			`{"size":5}{"size":6}`, `{"size": 6} x`, `{"SIZE": 6}`, `{"Size": 6}`, `{"size": 6, "User": "u_scram"}`,
		} {
			status, resp := g.call(t, "PUT", "/v1/pools/size", adminKey, body)
			var e struct{ Error string }
			if status != http.StatusBadRequest || json.Unmarshal(resp, &e) != nil || e.Error == "" {
				t.Errorf("PUT /v1/pools/size %q = %d %s, want 400 with an error", body, status, resp)
			}
		}
		if status, _ := g.call(t, "POST", "/v1/pools/size", adminKey, `{"size": 6}`); status != http.StatusMethodNotAllowed {
			t.Errorf("POST /v1/pools/size = %d, want 405", status)
		}
	})

	// Ten clients loop over short sessions until told to stop (bounded by
	// time and count as well), so the pool is always short of connections.
	const clients = 10
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs testkit.ErrorLog
	var sessions atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	bound := time.Now().Add(15 * time.Second)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000 && time.Now().Before(bound); i++ {
				select {
				case <-stop:
					return
				default:
				}
				conn, err := g.dial(ctx, pgtest.UserSCRAM, pgtest.PassSCRAM)
				if err != nil {
					errs.Add(fmt.Errorf("connect: %w", err))
					return
				}
				if _, err := query(ctx, conn, "select pg_sleep(0.03)"); err != nil {
					errs.Add(fmt.Errorf("query: %w", err))
				}
				conn.Close(ctx)
				sessions.Add(1)
			}
		}()
	}

	// The observer samples pg_stat_activity in each phase (1: size 2, 2: size
	// 6, 3: size 1); a sample counts for a phase only if the phase did not
	// change while it was taken.
	var phase atomic.Int32
	phase.Store(1)
	var maxSeen, samples [4]atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan error, 1)
	go func() {
		for i := 0; i < 100000; i++ {
			select {
			case <-stopSampling:
				sampled <- nil
				return
			default:
			}
			p := phase.Load()
			n, err := backendCount(ctx, obs, pgtest.UserSCRAM)
			if err != nil {
				sampled <- err
				return
			}
			if phase.Load() == p {
				if int64(n) > maxSeen[p].Load() {
					maxSeen[p].Store(int64(n))
				}
				samples[p].Add(1)
			}
			time.Sleep(5 * time.Millisecond)
		}
		sampled <- nil
	}()

	time.Sleep(700 * time.Millisecond)
	var resized struct {
		Size         int `json:"size"`
		PoolsChanged int `json:"pools_changed"`
	}
	g.get(t, "PUT", "/v1/pools/size", `{"size": 6}`, &resized)
	phase.Store(2)
	if resized.Size != 6 || resized.PoolsChanged != 1 {
		t.Errorf("PUT size 6 = %+v, want size 6 and one pool changed", resized)
	}
	if s := g.userPool(t, pgtest.UserSCRAM); s.Size != 6 {
		t.Errorf("/v1/pools size = %d after PUT size 6", s.Size)
	}
	// Give the pool up to 4s to grow; on a quiet machine it takes a few ms.
	for i := 0; i < 400 && maxSeen[2].Load() <= 2; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	g.get(t, "PUT", "/v1/pools/size", `{"size": 1, "database": "appdb", "user": "u_scram"}`, &resized)
	phase.Store(3)
	if resized.PoolsChanged != 1 {
		t.Errorf("PUT size 1 for appdb/u_scram changed %d pools, want 1", resized.PoolsChanged)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	close(stopSampling)
	if err := <-sampled; err != nil {
		t.Fatalf("observing pg_stat_activity: %v", err)
	}
	t.Logf("%d sessions; max u_scram backends by phase (size 2, 6, 1): %d %d %d in %d %d %d samples", sessions.Load(),
		maxSeen[1].Load(), maxSeen[2].Load(), maxSeen[3].Load(), samples[1].Load(), samples[2].Load(), samples[3].Load())
	if errs.Count() > 0 {
		t.Errorf("clients failed: %s", errs.String())
	}
	if n := maxSeen[1].Load(); n > 2 {
		t.Errorf("size 2: the server saw %d backends", n)
	}
	if n := maxSeen[2].Load(); n <= 2 || n > 6 {
		t.Errorf("size 6: the server saw at most %d backends, want 3 to 6", n)
	}

	// Once the load is gone the janitor closes the surplus.
	waitFor(t, 5*time.Second, "the pool to shrink to 1", func() (bool, string) {
		s := g.userPool(t, pgtest.UserSCRAM)
		n, _ := backendCount(ctx, obs, pgtest.UserSCRAM)
		return s.Total <= 1 && n <= 1, fmt.Sprintf("pool total %d, %d backends on the server", s.Total, n)
	})
	s := g.userPool(t, pgtest.UserSCRAM)
	if s.Closed["resize"] == 0 {
		t.Errorf("closed_by_reason = %v, want resize closes", s.Closed)
	}
	// A pool created after a resize without database and user gets its size.
	g.get(t, "PUT", "/v1/pools/size", `{"size": 4}`, nil)
	conn := g.mustDial(t, pgtest.UserMD5, pgtest.PassMD5)
	mustQuery(t, conn, "select 1")
	if s := g.userPool(t, pgtest.UserMD5); s.Size != 4 {
		t.Errorf("new pool after PUT {size: 4}: size %d, want 4", s.Size)
	}
}

// Pause for a database restart: new work waits, running sessions go on,
// idle connections are closed; resume lets the waiting query through.
func TestPauseResume(t *testing.T) {
	c := pgtest.Require(t)
	obs := observer(t, c)
	waitNoBackends(t, obs, pgtest.UserSCRAM)
	g := startGateway(t, c, testPoolConfig(func(p *pool.Config) { p.Size = 5 }), admin.Config{}, adminKey)

	// One session attached, and one idle connection left by a session that
	// ended.
	attached := g.mustDial(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	attachedPID := mustQuery(t, attached, "select pg_backend_pid()")
	ended := g.mustDial(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	endedPID := mustQuery(t, ended, "select pg_backend_pid()")
	ended.Close(context.Background())
	waitFor(t, 5*time.Second, "one idle and one busy pooled connection", func() (bool, string) {
		s := g.userPool(t, pgtest.UserSCRAM)
		return s.Idle == 1 && s.InUse == 1, fmt.Sprintf("%+v", s)
	})
	if status, _ := g.call(t, "GET", "/readyz", "", ""); status != http.StatusOK {
		t.Fatalf("/readyz = %d before the pause", status)
	}
	if v := value(g.scrape(t), "querycop_ready", nil); v != 1 {
		t.Errorf("querycop_ready = %v while /readyz answers 200, want 1", v)
	}

	var paused struct{ Paused bool }
	g.get(t, "POST", "/v1/pause", "", &paused)
	if !paused.Paused {
		t.Errorf("POST /v1/pause answered paused=false")
	}
	status, body := g.call(t, "GET", "/readyz", "", "")
	var ready struct{ Status, Reason string }
	if status != http.StatusServiceUnavailable || json.Unmarshal(body, &ready) != nil || !strings.Contains(ready.Reason, "paused") {
		t.Errorf("/readyz while paused = %d %s, want 503 with reason paused", status, body)
	}
	fams := g.scrape(t)
	if v := value(fams, "querycop_paused", nil); v != 1 {
		t.Errorf("querycop_paused = %v while paused, want 1", v)
	}
	if v := value(fams, "querycop_ready", nil); v != 0 {
		t.Errorf("querycop_ready = %v while paused (/readyz 503), want 0", v)
	}

	// The idle connection is closed; only the attached session's remains.
	waitFor(t, 5*time.Second, "only the attached session's backend on the server", func() (bool, string) {
		b := backends(t, obs, pgtest.UserSCRAM)
		return len(b) == 1 && strings.HasPrefix(b[0], attachedPID+":"), fmt.Sprintf("backends %v, attached %s, ended %s", b, attachedPID, endedPID)
	})
	if got := mustQuery(t, attached, "select 41 + 1"); got != "42" {
		t.Errorf("the attached session got %q while paused", got)
	}

	// A new client: its first query waits for the resume.
	type result struct {
		v   string
		err error
	}
	blocked := make(chan result, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		conn, err := g.dial(ctx, pgtest.UserSCRAM, pgtest.PassSCRAM)
		if err != nil {
			blocked <- result{err: err}
			return
		}
		defer conn.Close(context.Background())
		v, err := query(ctx, conn, "select 'through'")
		blocked <- result{v, err}
	}()
	select {
	case r := <-blocked:
		t.Fatalf("a new client's query completed while paused: %q, %v", r.v, r.err)
	case <-time.After(time.Second):
	}
	if s := g.userPool(t, pgtest.UserSCRAM); s.Waiting != 1 {
		t.Errorf("clients_waiting = %d while a new client waits, want 1", s.Waiting)
	}
	if b := backends(t, obs, pgtest.UserSCRAM); len(b) != 1 {
		t.Errorf("backends while paused with a client waiting: %v, want only the attached one", b)
	}

	var resumed struct{ Paused bool }
	g.get(t, "POST", "/v1/resume", "", &resumed)
	if resumed.Paused {
		t.Errorf("POST /v1/resume answered paused=true")
	}
	select {
	case r := <-blocked:
		if r.err != nil || r.v != "through" {
			t.Errorf("after resume the waiting query returned %q, %v; want \"through\"", r.v, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting query did not complete within 10s of the resume")
	}
	waitFor(t, 5*time.Second, "/readyz 200 after the resume", func() (bool, string) {
		status, body := g.call(t, "GET", "/readyz", "", "")
		return status == http.StatusOK, fmt.Sprintf("%d %s", status, body)
	})
	s := g.userPool(t, pgtest.UserSCRAM)
	if s.Closed["pause"] < 1 {
		t.Errorf("closed_by_reason = %v, want the idle connection closed for pause", s.Closed)
	}
	if s.AcquireTimeouts != 0 {
		t.Errorf("acquire_timeouts = %d", s.AcquireTimeouts)
	}
}

// Drain retires every pooled connection without cutting anyone off: idle
// ones at once, busy ones when their session ends.
func TestDrain(t *testing.T) {
	c := pgtest.Require(t)
	obs := observer(t, c)
	waitNoBackends(t, obs, pgtest.UserSCRAM)
	g := startGateway(t, c, testPoolConfig(func(p *pool.Config) { p.Size = 5 }), admin.Config{}, adminKey)

	// Four sessions at once, so four connections: three are left idle when
	// their sessions end, one stays in a transaction through the drain.
	var old []string
	var ended []*pgconn.PgConn
	for range 3 {
		conn := g.mustDial(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
		old = append(old, mustQuery(t, conn, "select pg_backend_pid()"))
		ended = append(ended, conn)
	}
	busy := g.mustDial(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	busyPID := mustQuery(t, busy, "begin; select pg_backend_pid()")
	for _, conn := range ended {
		conn.Close(context.Background())
	}
	waitFor(t, 5*time.Second, "three idle pooled connections", func() (bool, string) {
		s := g.userPool(t, pgtest.UserSCRAM)
		return s.Idle == 3 && s.InUse == 1, fmt.Sprintf("%+v", s)
	})

	var drained struct {
		N int `json:"connections_to_retire"`
	}
	g.get(t, "POST", "/v1/drain", "", &drained)
	if drained.N != 4 {
		t.Errorf("POST /v1/drain: connections_to_retire = %d, want 4 (3 idle, 1 busy)", drained.N)
	}
	waitFor(t, 5*time.Second, "the drained idle connections to leave the server", func() (bool, string) {
		b := backends(t, obs, pgtest.UserSCRAM)
		for _, pid := range old {
			if slices.ContainsFunc(b, func(s string) bool { return strings.HasPrefix(s, pid+":") }) {
				return false, fmt.Sprintf("backends %v, drained %v", b, old)
			}
		}
		return true, ""
	})

	// The busy session was not cut off.
	if got := mustQuery(t, busy, "select pg_backend_pid()"); got != busyPID {
		t.Errorf("the busy session moved from backend %s to %s", busyPID, got)
	}
	mustQuery(t, busy, "commit")
	// New sessions work, on fresh connections.
	fresh := g.mustDial(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	if pid := mustQuery(t, fresh, "select pg_backend_pid()"); slices.Contains(old, pid) || pid == busyPID {
		t.Errorf("a session after the drain got backend %s, one of the drained %v / %s", pid, old, busyPID)
	}
	fresh.Close(context.Background())
	// The busy one goes when its session ends.
	busy.Close(context.Background())
	waitFor(t, 5*time.Second, "the busy session's backend to be retired after it ended", func() (bool, string) {
		b := backends(t, obs, pgtest.UserSCRAM)
		gone := !slices.ContainsFunc(b, func(s string) bool { return strings.HasPrefix(s, busyPID+":") })
		return gone, fmt.Sprintf("backends %v, busy %s", b, busyPID)
	})
	if s := g.userPool(t, pgtest.UserSCRAM); s.Closed["lifetime"] < 4 || s.Retired < 4 {
		t.Errorf("closed_by_reason %v, retired %d; want at least 4 lifetime retirements", s.Closed, s.Retired)
	}
}

// /readyz follows the backend: 503 with a reason while it is down, 200 once
// it is back. The cluster is a separate one, since it is stopped.
func TestReadyzFollowsBackend(t *testing.T) {
	pgtest.Require(t)
	c2, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatalf("starting a second cluster: %v", err)
	}
	t.Cleanup(c2.Stop)
	g := startGateway(t, c2, testPoolConfig(nil), admin.Config{}, adminKey)

	readyz := func() (int, string, string) {
		status, body := g.call(t, "GET", "/readyz", "", "")
		var v struct{ Status, Reason string }
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatalf("/readyz body is not JSON: %s", body)
		}
		return status, v.Status, v.Reason
	}
	if status, st, reason := readyz(); status != http.StatusOK || st != "ready" {
		t.Fatalf("/readyz = %d %s %s with the backend up, want 200 ready", status, st, reason)
	}
	if err := c2.StopServer("fast"); err != nil {
		t.Fatal(err)
	}
	// The verdict is cached for 2s.
	waitFor(t, 8*time.Second, "/readyz 503 with the backend down", func() (bool, string) {
		status, st, reason := readyz()
		return status == http.StatusServiceUnavailable && st == "unavailable" && reason != "", fmt.Sprintf("%d %s %q", status, st, reason)
	})
	_, _, reason := readyz()
	if reason != "the backend does not accept connections" {
		t.Errorf("/readyz reason %q does not say the backend could not be dialled", reason)
	}
	// The details (address, cause) go to the log only: /readyz needs no key.
	if !strings.Contains(g.log.String(), "backend dial failed") {
		t.Errorf("the log does not say why the gateway is not ready")
	}
	if status, _ := g.call(t, "GET", "/healthz", "", ""); status != http.StatusOK {
		t.Errorf("/healthz = %d with the backend down, want 200 (liveness does not depend on the backend)", status)
	}
	if err := c2.StartServer(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 8*time.Second, "/readyz 200 with the backend back", func() (bool, string) {
		status, st, reason := readyz()
		return status == http.StatusOK, fmt.Sprintf("%d %s %q", status, st, reason)
	})
}

// A client that times out while the pools are paused is told about the
// pause, not sent to raise GATEKEEPER_POOL_SIZE: the pool is not full.
func TestAcquireTimeoutWhilePausedNamesThePause(t *testing.T) {
	c := pgtest.Require(t)
	g := startGateway(t, c, testPoolConfig(func(p *pool.Config) { p.Size, p.AcquireTimeout = 5, 500*time.Millisecond }), admin.Config{}, adminKey)
	// Verify the credential first, so the client below gets past start-up.
	first := g.mustDial(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	mustQuery(t, first, "select 1")
	first.Close(context.Background())

	g.get(t, "POST", "/v1/pause", "", nil)
	defer g.get(t, "POST", "/v1/resume", "", nil)
	conn := g.mustDial(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := query(ctx, conn, "select 1")
	// 57P03 cannot_connect_now: the server side is deliberately not
	// taking work, as while PostgreSQL starts or stops.
	if sqlState(err) != "57P03" {
		t.Fatalf("query while paused past the acquire timeout: %v, want SQLSTATE 57P03", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "paused") || strings.Contains(msg, "the pool is full") {
		t.Errorf("error while paused: %q; want it to say the pools are paused (POST /v1/resume), not that the pool is full", msg)
	}
}

// Every client the log reports as refused is counted in
// querycop_clients_refused_total under the same reason.
func TestRefusedMetricMatchesLog(t *testing.T) {
	c := pgtest.Require(t)

	packet := func(code uint32, body string) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(8+len(body)))
		b = binary.BigEndian.AppendUint32(b, code)
		return append(b, body...)
	}
	tests := []struct {
		name   string
		send   []byte
		reason string
	}{
		{"no-user", packet(3<<16, "database\x00appdb\x00\x00"), "bad-startup"},
		{"ssl-request-with-body", packet(80877103, "xxxx"), "protocol-violation"},
		{"protocol-2.0", packet(2<<16, ""), "protocol-violation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A gateway each: refusal lines are rate-limited per reason
			// and address, and these come from one address.
			g := startGateway(t, c, testPoolConfig(nil), admin.Config{}, adminKey)
			labels := map[string]string{"reason": tt.reason}
			before := max(value(g.scrape(t), "querycop_clients_refused_total", labels), 0)
			logged := func() int { return strings.Count(g.log.String(), `"reason":"`+tt.reason+`"`) }
			loggedBefore := logged()
			conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", g.port), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := conn.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			resp, _ := io.ReadAll(conn)
			if len(resp) == 0 || resp[0] != 'E' {
				t.Fatalf("answer %q, want an ErrorResponse", resp)
			}
			// The counter is taken before the line is logged.
			waitFor(t, 2*time.Second, "the gateway to log the refusal", func() (bool, string) {
				return logged() > loggedBefore, g.log.String()
			})
			after := value(g.scrape(t), "querycop_clients_refused_total", labels)
			if after != before+1 {
				t.Errorf("logged as refused with reason %s, but querycop_clients_refused_total{reason=%q} went from %v to %v",
					tt.reason, tt.reason, before, after)
			}
		})
	}
}
