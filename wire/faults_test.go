package wire_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
	"github.com/querycop/querycop/pool"
	"github.com/querycop/querycop/wire"
)

// Fault-injection tests: the backend down, killed, silent or restarted, the
// token command failing or hanging, clients that vanish mid-COPY, arrive by
// the thousand or never read. Tests that stop, restart or terminate backends
// run against a cluster of their own.

// fltModes are the pool modes the tests run in where the mode matters.
var fltModes = []wire.PoolMode{wire.SessionMode, wire.TransactionMode}

func fltMode(m wire.PoolMode) func(*wire.Config) {
	return func(w *wire.Config) { w.PoolMode = m }
}

// fltCluster starts a cluster for this test alone, stopped when it ends.
func fltCluster(t *testing.T, opts pgtest.Options) *pgtest.Cluster {
	t.Helper()
	pgtest.Require(t)
	c, err := pgtest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

// fltSQL runs sql as the superuser in database appdb of c, on a connection
// of its own (over the Unix socket, so it survives nothing and counts as no
// u_scram backend), and returns the first column of the first row of the
// last result that has rows ("" when none has). Safe from any goroutine.
func fltSQL(c *pgtest.Cluster, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable",
		c.SocketDir, c.Port, pgtest.Database))
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	return testkit.Query(ctx, conn, sql)
}

func mustFltSQL(t *testing.T, c *pgtest.Cluster, sql string) string {
	t.Helper()
	v, err := fltSQL(c, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// fltPgErr is the server (or gateway) error in err, or nil.
func fltPgErr(err error) *pgconn.PgError {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr
	}
	return nil
}

// fltHeap samples the process's HeapInuse every 100ms until stop is called,
// which returns the highest value seen (the gateway runs in this process).
func fltHeap() (stop func() uint64) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	peak := ms.HeapInuse
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 100000; i++ {
			select {
			case <-quit:
				return
			case <-time.After(100 * time.Millisecond):
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
		}
	}()
	return func() uint64 {
		close(quit)
		<-done
		return peak
	}
}

// fltHeapNow is HeapInuse after a GC.
func fltHeapNow() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

const mib = 1 << 20

// fltStacks returns the stacks of the goroutines that have a frame
// containing any of funcs.
func fltStacks(funcs ...string) string {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, f := range funcs {
			if strings.Contains(g, f) {
				out = append(out, g)
				break
			}
		}
	}
	return strings.Join(out, "\n\n")
}

// ---------------------------------------------------------------------------
// 1. Backend down when the gateway starts.

func TestFaultBackendDownAtStart(t *testing.T) {
	c := fltCluster(t, pgtest.Options{})
	for _, mode := range fltModes {
		t.Run(string(mode), func(t *testing.T) {
			if err := c.StopServer("fast"); err != nil {
				t.Fatal(err)
			}
			bcfg := backendConfig(c, backend.TLSDisable)
			bcfg.ConnectTimeout = 5 * time.Second
			// startPooledGateway fails the test if the gateway does not start.
			g := startPooledGateway(t, bcfg, testPoolConfig(), fltMode(mode))

			for i := range 3 {
				start := time.Now()
				cn, err := g.connect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
				elapsed := time.Since(start)
				if err == nil {
					cn.Close(context.Background())
					t.Fatalf("client %d was admitted while the server is down", i)
				}
				pgErr := fltPgErr(err)
				if pgErr == nil || pgErr.Code != "08001" || pgErr.Severity != "FATAL" || !strings.HasPrefix(pgErr.Message, "backend dial failed: ") {
					t.Fatalf("client %d while the server is down: %v; want FATAL 08001 \"backend dial failed: ...\"", i, err)
				}
				// Connection refused is immediate; the bound is the connect
				// timeout with room for a loaded machine, not a performance claim.
				if elapsed > 10*time.Second {
					t.Errorf("client %d waited %s for its refusal (connect timeout 5s)", i, elapsed)
				}
				if i == 0 {
					t.Logf("while the server is down: %q after %s", pgErr.Message, elapsed.Round(time.Millisecond))
				}
			}

			if err := c.StartServer(); err != nil {
				t.Fatal(err)
			}
			// The very next client is served, by the same gateway.
			cn, err := g.connect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			if err != nil {
				t.Fatalf("first client after the server started: %v", err)
			}
			defer cn.Close(context.Background())
			if got := queryValue(t, cn, "select 1"); got != "1" {
				t.Errorf("select 1 = %q", got)
			}
			var wg sync.WaitGroup
			var errs testkit.ErrorLog
			for range 8 {
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					if err := session(ctx, g, "select 2", "2", 3); err != nil {
						errs.Add(err)
					}
				})
			}
			wg.Wait()
			if errs.Count() > 0 {
				t.Errorf("clients after the server started: %s", errs.String())
			}
			st, _ := userStats(g, pgtest.UserSCRAM)
			t.Logf("pool: created %d, dial failures %d, closed %v", st.Created, st.DialFailures, st.Closed)
		})
	}
}

// ---------------------------------------------------------------------------
// 2. pg_terminate_backend of a pooled connection, idle and in use.

// fltTerminate terminates backend pid and waits (up to 10s) for it to exit.
func fltTerminate(t *testing.T, c *pgtest.Cluster, pid string) {
	t.Helper()
	if got := mustFltSQL(t, c, "select pg_terminate_backend("+pid+", 10000)"); got != "t" {
		t.Fatalf("pg_terminate_backend(%s) = %s", pid, got)
	}
}

func TestFaultTerminateBackend(t *testing.T) {
	c := fltCluster(t, pgtest.Options{})
	for _, mode := range fltModes {
		t.Run(string(mode), func(t *testing.T) {
			g := startPooledGateway(t, backendConfig(c, backend.TLSDisable),
				pooledConfig(func(p *pool.Config) { p.Size = 3 }), fltMode(mode))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()

			t.Run("idle", func(t *testing.T) {
				a := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
				pid := queryValue(t, a, "select pg_backend_pid()")
				a.Close(ctx)
				waitIdle(t, g, pgtest.UserSCRAM)
				if st, _ := userStats(g, pgtest.UserSCRAM); st.Idle < 1 {
					t.Fatalf("no idle connection in the pool: %+v", st)
				}
				goneBefore := func() int64 { st, _ := userStats(g, pgtest.UserSCRAM); return st.Closed["backend-gone"] }()
				fltTerminate(t, c, pid)

				b := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
				got, err := query(ctx, b, "select pg_backend_pid()")
				if err != nil {
					t.Fatalf("the next client after its pooled backend was terminated: %v; want it served on a replacement", err)
				}
				if got == pid {
					t.Fatalf("the next client ran on the terminated backend %s", pid)
				}
				waitFor(t, 5*time.Second, "the dead connection to be closed as backend-gone", func() (bool, string) {
					st, _ := userStats(g, pgtest.UserSCRAM)
					return st.Closed["backend-gone"] > goneBefore, fmt.Sprintf("closed %v", st.Closed)
				})
				b.Close(ctx)
				waitIdle(t, g, pgtest.UserSCRAM)
			})

			t.Run("in use", func(t *testing.T) {
				a := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
				other := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
				pidA := mustQuery(t, a, "begin; select pg_backend_pid()")
				pidO := mustQuery(t, other, "begin; create temp table flt_other(v int) on commit drop; insert into flt_other values (1); select pg_backend_pid()")
				if pidA == pidO {
					t.Fatalf("both clients on backend %s", pidA)
				}
				// Traffic from a third client while the backend dies.
				stop := make(chan struct{})
				var thirdErrs testkit.ErrorLog
				var thirdOK atomic.Int64
				var wg sync.WaitGroup
				wg.Go(func() {
					for i := 0; i < 10000; i++ {
						select {
						case <-stop:
							return
						default:
						}
						if err := session(ctx, g, "select 3", "3", 2); err != nil {
							thirdErrs.Add(err)
						} else {
							thirdOK.Add(1)
						}
						time.Sleep(10 * time.Millisecond)
					}
				})

				fltTerminate(t, c, pidA)
				_, err := query(ctx, a, "select 1")
				if pgErr := fltPgErr(err); pgErr == nil || pgErr.Code != "57P01" || pgErr.Severity != "FATAL" {
					t.Errorf("the client whose backend was terminated got %v; want the server's FATAL 57P01", err)
				} else {
					t.Logf("the client whose backend was terminated got: %s %s %q", pgErr.Severity, pgErr.Code, pgErr.Message)
				}

				// The other client is untouched: same backend, same transaction.
				if got, err := query(ctx, other, "select count(*) from flt_other"); err != nil || got != "1" {
					t.Errorf("the other client, mid-transaction: %q, %v", got, err)
				}
				if got, err := query(ctx, other, "select pg_backend_pid()"); err != nil || got != pidO {
					t.Errorf("the other client moved from backend %s to %q (%v)", pidO, got, err)
				}
				if _, err := query(ctx, other, "commit"); err != nil {
					t.Errorf("the other client's commit: %v", err)
				}
				time.Sleep(300 * time.Millisecond)
				close(stop)
				wg.Wait()
				if thirdErrs.Count() > 0 || thirdOK.Load() == 0 {
					t.Errorf("a third client's sessions while the backend died: %d ok, %s", thirdOK.Load(), thirdErrs.String())
				}
				// And new clients are served.
				if err := session(ctx, g, "select 4", "4", 2); err != nil {
					t.Errorf("a new client after the termination: %v", err)
				}
				st, _ := userStats(g, pgtest.UserSCRAM)
				t.Logf("pool: total %d, in use %d, created %d, closed %v", st.Total, st.InUse, st.Created, st.Closed)
			})
		})
	}
}

// ---------------------------------------------------------------------------
// 3. A backend that accepts TCP connections and never answers.

// fltBlackHole is a TCP listener that accepts and reads, and never writes.
type fltBlackHole struct {
	ln       net.Listener
	accepted atomic.Int64
	open     atomic.Int64
	mu       sync.Mutex
	conns    []net.Conn
	wg       sync.WaitGroup
}

func startBlackHole(t *testing.T) *fltBlackHole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &fltBlackHole{ln: ln}
	b.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			b.accepted.Add(1)
			b.open.Add(1)
			b.mu.Lock()
			b.conns = append(b.conns, conn)
			b.mu.Unlock()
			b.wg.Go(func() {
				// Until the gateway closes its end.
				_, _ = io.Copy(io.Discard, conn)
				conn.Close()
				b.open.Add(-1)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *fltBlackHole) port() int { return b.ln.Addr().(*net.TCPAddr).Port }

func TestFaultBackendBlackHole(t *testing.T) {
	c := pgtest.Require(t)
	hole := startBlackHole(t)
	bcfg := backendConfig(c, backend.TLSDisable)
	bcfg.Host, bcfg.Port, bcfg.ConnectTimeout = "127.0.0.1", hole.port(), time.Second
	g := startGateway(t, bcfg)
	// Another gateway of the same process, in front of the real server.
	good := startGateway(t, backendConfig(c, backend.TLSDisable))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := session(ctx, good, "select 1", "1", 1); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, good, pgtest.UserSCRAM)
	runtime.GC()
	baseline := runtime.NumGoroutine()

	const clients = 5
	type result struct {
		err     error
		elapsed time.Duration
	}
	results := make([]result, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			start := time.Now()
			cn, err := g.dial(ctx, pgtest.UserSCRAM, pgtest.PassSCRAM)
			if err == nil {
				_, err = query(ctx, cn, "select 1")
				cn.Close(context.Background())
				if err == nil {
					err = errors.New("served by a backend that never answers")
				}
			}
			results[i] = result{err, time.Since(start)}
		})
	}
	// Meanwhile the process serves clients of the other gateway.
	time.Sleep(200 * time.Millisecond)
	for i := range 3 {
		if err := session(ctx, good, "select 5", "5", 2); err != nil {
			t.Errorf("client %d of the other gateway while the black hole swallows dials: %v", i, err)
		}
	}
	wg.Wait()
	var took []string
	for i, r := range results {
		took = append(took, r.elapsed.Round(time.Millisecond).String())
		pgErr := fltPgErr(r.err)
		if pgErr == nil || pgErr.Severity != "FATAL" || pgErr.Code != "08001" || !strings.HasPrefix(pgErr.Message, "backend dial failed: ") {
			t.Errorf("client %d: %v; want FATAL 08001 \"backend dial failed: ...\"", i, r.err)
		} else if i == 0 {
			t.Logf("client 0 got %q", pgErr.Message)
		}
		// A bound for a loaded machine, not a performance claim.
		if r.elapsed > 15*time.Second {
			t.Errorf("client %d waited %s for its FATAL (BACKEND_CONNECT_TIMEOUT=1s)", i, r.elapsed)
		}
	}
	t.Logf("%d concurrent clients refused after %v; the black hole accepted %d connections", clients, took, hole.accepted.Load())
	waitFor(t, 10*time.Second, "the gateway to close its connections to the black hole", func() (bool, string) {
		return hole.open.Load() == 0, fmt.Sprintf("%d still open", hole.open.Load())
	})
	waitFor(t, 10*time.Second, "the goroutine count to return to its baseline (+5)", func() (bool, string) {
		n := runtime.NumGoroutine()
		return n <= baseline+5, fmt.Sprintf("%d goroutines, baseline %d", n, baseline)
	})
}

// ---------------------------------------------------------------------------
// 4. Token command hangs and fails during traffic.

func TestFaultTokenCommand(t *testing.T) {
	c := pgtest.Require(t)
	const role = "flt_tok"
	env := newTokEnv(t, c)
	flags := t.TempDir()
	failFlag, hangFlag := filepath.Join(flags, "fail"), filepath.Join(flags, "hang")
	t.Setenv("TOKENCMD_FAIL_FLAG", failFlag) // switchable.sh fails while it exists
	t.Setenv("FLT_HANG_FLAG", hangFlag)      // the command below hangs while it exists
	env.createRole(role, time.Now().Add(time.Hour))
	cfg := tokenBackendConfig(c, "switchable.sh")
	cfg.Token.Cmd = `if [ -e "$FLT_HANG_FLAG" ]; then sleep 300; fi; exec '` + cfg.Token.Cmd + `'`
	cfg.Token.Timeout = time.Second
	pcfg := testPoolConfig()
	pcfg.Size = 4
	g := startPooledGateway(t, cfg, pcfg)
	env.watch(g)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	// Two established sessions, each on its own backend, busy all along.
	var pids []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var trafficErrs testkit.ErrorLog
	var trafficOK atomic.Int64
	for range 2 {
		s := g.mustConnect(t, role, "x")
		pid := queryValue(t, s, "select pg_backend_pid()")
		pids = append(pids, pid)
		wg.Go(func() {
			for i := 0; i < 100000; i++ {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				if got, err := query(ctx, s, "select pg_backend_pid()"); err != nil || got != pid {
					trafficErrs.Add(fmt.Errorf("established session on %s: %q, %v", pid, got, err))
				} else {
					trafficOK.Add(1)
				}
			}
		})
	}
	stopTraffic := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopTraffic()
	if st := tokPoolStats(g, role); st.Idle != 0 {
		t.Fatalf("pool %+v: want no idle connection, so a new client needs a new backend connection", st)
	}

	phase := func(name, flag, want string) {
		t.Helper()
		if err := os.WriteFile(flag, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		// The server stops taking the cached token: the next backend
		// connection needs a run of the command, which now fails.
		env.rotate(role, time.Now().Add(time.Hour))
		// Connections made with the cached token and idle in the pool would
		// serve new clients (rightly); retire them so clients need a dial.
		g.pools.Drain()
		attempts, wrong := 0, 0
		for end := time.Now().Add(2500 * time.Millisecond); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			attempts++
			start := time.Now()
			_, _, err := tokSession(g, role)
			pgErr := fltPgErr(err)
			if pgErr == nil || pgErr.Severity != "FATAL" || pgErr.Code != "08001" || pgErr.Message != want {
				wrong++
				if wrong <= 3 {
					t.Errorf("%s: new client %d got %v; want FATAL 08001 %q", name, attempts, err, want)
				}
			}
			if took := time.Since(start); took > 15*time.Second {
				t.Errorf("%s: new client %d waited %s for its refusal", name, attempts, took)
			}
		}
		if !tokHasWarn(g.log.String(), want) {
			t.Errorf("%s: no WARN log line with %q", name, want)
		}
		if err := os.Remove(flag); err != nil {
			t.Fatal(err)
		}
		fixed := time.Now()
		var lastErr error
		if !tokWait(30*time.Second, func() bool {
			var user string
			user, _, lastErr = tokSession(g, role)
			return lastErr == nil && user == role
		}) {
			t.Fatalf("%s: no new client got in within 30s after the command recovered; last error: %v", name, lastErr)
		}
		t.Logf("%s: %d new clients refused with %q; a client got in %s after the command recovered",
			name, attempts, want, time.Since(fixed).Round(time.Millisecond))
	}
	phase("failing command", failFlag, aadstsMessage)
	phase("hanging command", hangFlag, "backend token command failed: timed out after 1s")

	stopTraffic()
	if trafficErrs.Count() > 0 {
		t.Errorf("established sessions: %d queries ok, %s", trafficOK.Load(), trafficErrs.String())
	}
	if trafficOK.Load() < 20 {
		t.Errorf("established sessions ran only %d queries", trafficOK.Load())
	}
	st := tokPoolStats(g, role)
	t.Logf("established sessions ran %d queries on backends %v; pool: created %d, dial failures %d, closed %v; command runs %d",
		trafficOK.Load(), pids, st.Created, st.DialFailures, st.Closed, len(env.runs()))
}

// ---------------------------------------------------------------------------
// 5. A client killed mid-COPY and mid-transaction.

// fltRawUntil reads until stopAt holds for a message, and fails the test on
// an ErrorResponse.
func fltRawUntil(t *testing.T, rc *rawConn, stopAt func(pgproto3.BackendMessage) bool) []string {
	t.Helper()
	_ = rc.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	defer rc.conn.SetReadDeadline(time.Time{})
	var seen []string
	for i := 0; i < 1000; i++ {
		msg, err := rc.fe.Receive()
		if err != nil {
			t.Fatalf("reading after %q: %v", seen, err)
		}
		if line, ok := describeMsg(msg); ok {
			seen = append(seen, line)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("server error after %q: %s %s", seen, e.Code, e.Message)
		}
		if stopAt(msg) {
			return seen
		}
	}
	t.Fatalf("no end after %q", seen)
	return nil
}

// fltCheckAbandoned checks what a killed client left: nothing of flt_copy
// (its rows were never committed), no lock on flt_lock (its update rolled
// back: v is still want-1 and the next update sets want), and no u_scram
// backend active or idle in transaction. A client that died mid-statement
// leaves its backend in an unknown state: it must be gone (closed, not
// pooled); one that died between statements may leave it rolled back and
// pooled.
func fltCheckAbandoned(t *testing.T, c *pgtest.Cluster, g *gateway, pid string, want int, midStatement bool) {
	t.Helper()
	waitFor(t, 10*time.Second, "no u_scram backend idle in transaction or active", func() (bool, string) {
		v, err := fltSQL(c, "select count(*) || ' ' || coalesce(string_agg(pid || ':' || state, ','), '') from pg_stat_activity where usename = 'u_scram' and (state like 'idle in transaction%' or state = 'active')")
		return err == nil && strings.HasPrefix(v, "0 "), fmt.Sprintf("%s %v", v, err)
	})
	if got := mustFltSQL(t, c, "select count(*) from pg_stat_activity where pid = "+pid); midStatement && got != "0" {
		t.Errorf("the backend %s of the client killed mid-statement still exists", pid)
	}
	if got := mustFltSQL(t, c, "select count(*) from flt_copy"); got != "0" {
		t.Errorf("flt_copy has %s rows after the client died before committing", got)
	}
	b := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got, err := query(ctx, b, "set lock_timeout = '5s'; update flt_lock set v = v + 1 where id = 1 returning v")
	if err != nil {
		t.Fatalf("another client's update of the row the killed client locked: %v", err)
	}
	if got != strconv.Itoa(want) {
		t.Errorf("v = %s after the other client's update, want %d: the killed client's update was committed", got, want)
	}
	if got := mustFltSQL(t, c, "select count(*) from pg_locks l join pg_class r on r.oid = l.relation where r.relname in ('flt_lock', 'flt_copy')"); got != "0" {
		t.Errorf("%s locks still held on flt_lock or flt_copy", got)
	}
	b.Close(ctx)
}

func TestFaultClientKilledMidCopy(t *testing.T) {
	c := fltCluster(t, pgtest.Options{})
	mustFltSQL(t, c, `create table flt_copy(id int, v text);
		create table flt_lock(id int primary key, v int);
		insert into flt_lock values (1, 0);
		grant all on flt_copy, flt_lock to u_scram`)
	v := 0 // flt_lock's v, updated once per check
	for _, mode := range fltModes {
		t.Run(string(mode), func(t *testing.T) {
			g := startPooledGateway(t, backendConfig(c, backend.TLSDisable),
				pooledConfig(func(p *pool.Config) { p.Size = 2 }), fltMode(mode))

			t.Run("mid-COPY", func(t *testing.T) {
				a := rawGateway(t, g)
				a.run(t, txQuery("begin"))
				a.run(t, txQuery("update flt_lock set v = v + 100 where id = 1"))
				pid := strings.Trim(strings.TrimPrefix(a.run(t, txQuery("select pg_backend_pid()"))[1], "DataRow "), `"`)
				a.fe.Send(txQuery("copy flt_copy from stdin"))
				if err := a.fe.Flush(); err != nil {
					t.Fatal(err)
				}
				fltRawUntil(t, a, func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.CopyInResponse); return ok })
				// Half of the data: 20000 of 40000 rows, then the socket closes.
				data := copyRows(20000, "half", 0)
				_ = a.conn.SetWriteDeadline(time.Now().Add(20 * time.Second))
				for off := 0; off < len(data); off += 32 << 10 {
					a.fe.Send(&pgproto3.CopyData{Data: data[off:min(off+32<<10, len(data))]})
					if err := a.fe.Flush(); err != nil {
						t.Fatalf("sending COPY data: %v", err)
					}
				}
				waitFor(t, 10*time.Second, "the server to be copying the client's rows", func() (bool, string) {
					n, err := fltSQL(c, "select coalesce(max(tuples_processed), 0) from pg_stat_progress_copy where pid = "+pid)
					k, _ := strconv.Atoi(n)
					return err == nil && k > 0, fmt.Sprintf("%s rows processed (%v)", n, err)
				})
				a.conn.Close()
				v++
				fltCheckAbandoned(t, c, g, pid, v, true)
				st, _ := userStats(g, pgtest.UserSCRAM)
				t.Logf("pool after the killed COPY: total %d, in use %d, closed %v, rollbacks %d", st.Total, st.InUse, st.Closed, st.Rollbacks)
			})

			t.Run("mid-transaction", func(t *testing.T) {
				a := rawGateway(t, g)
				a.run(t, txQuery("begin"))
				a.run(t, txQuery("insert into flt_copy values (-1, 'uncommitted')"))
				a.run(t, txQuery("update flt_lock set v = v + 100 where id = 1"))
				pid := strings.Trim(strings.TrimPrefix(a.run(t, txQuery("select pg_backend_pid()"))[1], "DataRow "), `"`)
				a.conn.Close()
				v++
				fltCheckAbandoned(t, c, g, pid, v, false)
			})

			t.Run("mid-query", func(t *testing.T) {
				a := rawGateway(t, g)
				a.run(t, txQuery("begin"))
				a.run(t, txQuery("update flt_lock set v = v + 100 where id = 1"))
				pid := strings.Trim(strings.TrimPrefix(a.run(t, txQuery("select pg_backend_pid()"))[1], "DataRow "), `"`)
				a.fe.Send(txQuery("insert into flt_copy select g, 'slow' from generate_series(1, 1000) g, pg_sleep(30)"))
				if err := a.fe.Flush(); err != nil {
					t.Fatal(err)
				}
				waitFor(t, 10*time.Second, "the client's query to run", func() (bool, string) {
					s, err := fltSQL(c, "select state from pg_stat_activity where pid = "+pid)
					return err == nil && s == "active", fmt.Sprintf("%q %v", s, err)
				})
				a.conn.Close()
				v++
				fltCheckAbandoned(t, c, g, pid, v, true)
			})
		})
	}
}

// ---------------------------------------------------------------------------
// 6. Thousands of connections at once.

func TestFaultConnectionFlood(t *testing.T) {
	c := pgtest.Require(t)
	total, maxClients, dialers := 5000, 1000, 200
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur < lim.Max {
		raised := lim
		raised.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
			t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) })
			t.Logf("open-file limit raised from %d to %d", lim.Cur, raised.Cur)
			lim = raised
		}
	}
	// This process holds both ends of every client socket: the admitted
	// clients and the dialers in flight, plus backends and some slack.
	need := func(admitted int) uint64 { return uint64(2*(admitted+dialers) + 500) }
	if lim.Cur < need(maxClients) {
		maxClients = max(10, (int(lim.Cur)-500)/2-dialers)
		total = 5 * maxClients
		t.Logf("open-file limit %d is too low for 1000 clients: scaled down to %d connections, %d admitted", lim.Cur, total, maxClients)
	}
	g := startPooledGateway(t, backendConfig(c, backend.TLSDisable), testPoolConfig(), func(w *wire.Config) {
		w.MaxClientConn = maxClients
		w.LoginTimeout = 20 * time.Second
	})
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	// The pool's credential check happens once, before the flood.
	if err := session(ctx, g, "select 1", "1", 1); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, g, pgtest.UserSCRAM)
	heapBefore := fltHeapNow()
	peakHeap := fltHeap()

	var (
		mu       sync.Mutex
		admitted []*pgconn.PgConn
		refused  int
		others   []string
		nOthers  int
	)
	start := time.Now()
	work := make(chan struct{})
	var wg sync.WaitGroup
	for range dialers {
		wg.Go(func() {
			for range work {
				cn, err := g.dial(ctx, pgtest.UserSCRAM, pgtest.PassSCRAM)
				mu.Lock()
				switch pgErr := fltPgErr(err); {
				case err == nil:
					admitted = append(admitted, cn)
				case pgErr != nil && pgErr.Code == "53300" && strings.Contains(pgErr.Message, "GATEKEEPER_MAX_CLIENT_CONN"):
					refused++
				default:
					nOthers++
					if len(others) < 5 {
						others = append(others, err.Error())
					}
				}
				mu.Unlock()
			}
		})
	}
	for range total {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	opened := time.Since(start)
	connected := g.srv.Stats().Connected
	t.Logf("%d connections in %s: %d admitted, %d refused with 53300, %d other errors %q; gateway reports %d connected",
		total, opened.Round(time.Millisecond), len(admitted), refused, nOthers, others, connected)
	if len(admitted) != maxClients {
		t.Errorf("%d clients admitted, want GATEKEEPER_MAX_CLIENT_CONN = %d", len(admitted), maxClients)
	}
	if refused != total-maxClients || nOthers > 0 {
		t.Errorf("%d refused with 53300 and %d other errors (%q), want %d refused and nothing else", refused, nOthers, others, total-maxClients)
	}
	if connected != int64(len(admitted)) {
		t.Errorf("the gateway counts %d clients, %d are connected", connected, len(admitted))
	}

	// Every admitted client works (in session mode it holds a backend from
	// its first query until it leaves, so each one queries and leaves).
	next := make(chan *pgconn.PgConn)
	var queryErrs testkit.ErrorLog
	for range 50 {
		wg.Go(func() {
			for cn := range next {
				if got, err := query(ctx, cn, "select 7"); err != nil || got != "7" {
					queryErrs.Add(fmt.Errorf("select 7 = %q, %v", got, err))
				}
				cn.Close(context.Background())
			}
		})
	}
	for _, cn := range admitted {
		next <- cn
	}
	close(next)
	wg.Wait()
	peak := peakHeap()
	if queryErrs.Count() > 0 {
		t.Errorf("admitted clients: %s", queryErrs.String())
	}
	waitFor(t, 20*time.Second, "the gateway's client count to return to 0", func() (bool, string) {
		n := g.srv.Stats().Connected
		return n == 0, fmt.Sprintf("%d connected", n)
	})
	after := fltHeapNow()
	t.Logf("HeapInuse: %d MiB before, %d MiB at most during, %d MiB after (this process: gateway and clients)",
		heapBefore/mib, peak/mib, after/mib)
	if peak > heapBefore+200*mib {
		t.Errorf("HeapInuse grew from %d MiB to %d MiB (bound +200 MiB)", heapBefore/mib, peak/mib)
	}
	st := g.srv.Stats()
	t.Logf("refused by reason: %v", st.Refused)
}

// ---------------------------------------------------------------------------
// 7. A client that sends without ever reading.

func TestFaultClientDoesNotRead(t *testing.T) {
	c := pgtest.Require(t)
	for _, mode := range fltModes {
		t.Run(string(mode), func(t *testing.T) {
			g := startPooledGateway(t, backendConfig(c, backend.TLSDisable),
				pooledConfig(func(p *pool.Config) { p.Size = 2 }), fltMode(mode))
			// Should the gateway not let go of the backend, end it from the
			// server side so that the gateway can stop when the test ends.
			const running = "select count(*) from pg_stat_activity where usename = 'u_scram' and query like 'select repeat(%'"
			t.Cleanup(func() {
				_, _ = fltSQL(c, "select pg_terminate_backend(pid) from pg_stat_activity where usename = 'u_scram' and query like 'select repeat(%'")
			})
			goroutines := runtime.NumGoroutine()
			heapBefore := fltHeapNow()
			peakHeap := fltHeap()
			a := rawGateway(t, g)

			msg, _ := txQuery("select repeat('x', 1000000)").Encode(nil)
			batch := make([]byte, 0, 1000*len(msg))
			for range 1000 {
				batch = append(batch, msg...)
			}
			start := time.Now()
			sent, blocked := 0, false
			for i := 0; i < 100000 && time.Since(start) < 10*time.Second; i++ {
				_ = a.conn.SetWriteDeadline(time.Now().Add(time.Second))
				n, err := a.conn.Write(batch)
				sent += n / len(msg)
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					blocked = true
					break
				}
				if err != nil {
					t.Fatalf("writing queries: %v", err)
				}
			}
			stats := g.srv.Stats()
			peak := peakHeap()
			t.Logf("sent %d queries (%d GiB of results asked for) in %s, write blocked: %v; the gateway relayed %d MiB to the client; HeapInuse %d MiB before, %d MiB at most",
				sent, sent/1024, time.Since(start).Round(time.Millisecond), blocked, stats.BytesToClients/mib, heapBefore/mib, peak/mib)
			if sent < 1024 {
				t.Errorf("only %d queries sent: less than 1 GiB of results asked for", sent)
			}
			if peak > heapBefore+256*mib {
				t.Errorf("HeapInuse grew from %d MiB to %d MiB while the client did not read (bound +256 MiB)", heapBefore/mib, peak/mib)
			}
			if !blocked {
				t.Errorf("the client's writes never blocked in 10s: the gateway reads on while the client does not")
			}

			a.conn.Close()
			// The gateway lets go of the backend: the server's query ends and
			// the pool has nothing in use.
			if !waitFor(t, 10*time.Second, "the abandoned query to end and its backend to be released", func() (bool, string) {
				n, err := fltSQL(c, running)
				st, _ := userStats(g, pgtest.UserSCRAM)
				return err == nil && n == "0" && st.InUse == 0, fmt.Sprintf("%s such queries on the server (%v), pool: %d in use", n, err, st.InUse)
			}) {
				t.Logf("the session's goroutines, still running:\n%s", fltStacks("wire.(*session)", "wire.(*txSession)"))
			}
			// Another client is served normally.
			b := g.mustConnect(t, pgtest.UserSCRAM, pgtest.PassSCRAM)
			if got := queryValue(t, b, "select length(repeat('x', 1000000))"); got != "1000000" {
				t.Errorf("another client: %q", got)
			}
			b.Close(context.Background())
			waitFor(t, 15*time.Second, "the goroutine count to return to what it was (+5)", func() (bool, string) {
				n := runtime.NumGoroutine()
				return n <= goroutines+5, fmt.Sprintf("%d goroutines, %d before", n, goroutines)
			})
		})
	}
}
