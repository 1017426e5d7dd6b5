package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
)

// These tests run the real binary as a subprocess in front of the cluster
// that TestMain starts, and signal it as Kubernetes would.

// testVersion is linked into the binary, to find it in the start-up line.
const testVersion = "1.2.3-lifecycle"

// lifecycleKey is the admin key given to the binary; it must never be
// printed.
const lifecycleKey = "k-lifecycle-Qm83r"

var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
)

// querycopBinary builds the command once per test run, into the cluster's
// directory, which Stop removes.
func querycopBinary(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	binaryOnce.Do(func() {
		goCmd, err := exec.LookPath("go")
		if err != nil {
			binaryErr = fmt.Errorf("finding the go command to build querycop: %w", err)
			return
		}
		dir := filepath.Join(c.Dir, "bin")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			binaryErr = err
			return
		}
		binaryPath = filepath.Join(dir, "querycop")
		cmd := exec.Command(goCmd, "build", "-ldflags", "-X main.version="+testVersion, "-o", binaryPath, ".")
		if out, err := cmd.CombinedOutput(); err != nil {
			binaryErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binaryErr != nil {
		t.Fatal(binaryErr)
	}
	return binaryPath
}

// lineBuffer collects the process's stderr.
type lineBuffer struct{ testkit.LogBuffer }

// lines decodes the JSON log lines; a line that is not JSON fails the test.
func (l *lineBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(l.String()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Errorf("log line is not JSON: %q", sc.Text())
			continue
		}
		out = append(out, m)
	}
	return out
}

// process is a running querycop.
type process struct {
	cmd     *exec.Cmd
	stderr  *lineBuffer
	exited  chan struct{}
	waitErr error
	port    int    // pool port
	api     string // admin API base URL
}

// freePort asks the kernel for a free loopback port.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startQuerycop runs the binary in front of c with extra variables added
// to the environment, and waits until its admin API answers.
func startQuerycop(t *testing.T, c *pgtest.Cluster, extra ...string) *process {
	t.Helper()
	bin := querycopBinary(t, c)
	p := &process{stderr: &lineBuffer{}, exited: make(chan struct{}), port: freePort(t)}
	apiPort := freePort(t)
	p.api = fmt.Sprintf("http://127.0.0.1:%d", apiPort)
	p.cmd = exec.Command(bin)
	p.cmd.Env = append([]string{
		"GATEKEEPER_BACKEND_HOST=127.0.0.1",
		"GATEKEEPER_BACKEND_PORT=" + strconv.Itoa(c.Port),
		"GATEKEEPER_BACKEND_TLS_MODE=disable",
		"GATEKEEPER_LISTEN_PORT=" + strconv.Itoa(p.port),
		"GATEKEEPER_API_PORT=" + strconv.Itoa(apiPort),
		"GATEKEEPER_LOG_LEVEL=debug",
		"ADMIN_API_KEY=" + lifecycleKey,
	}, extra...)
	p.cmd.Stdout = p.stderr
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting querycop: %v", err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		out := p.stderr.String()
		for _, s := range []string{lifecycleKey, pgtest.PassSCRAM} {
			if strings.Contains(out, s) {
				t.Errorf("querycop's output contains the secret %q", s)
			}
		}
		if t.Failed() {
			t.Logf("querycop output:\n%s", out)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if status, _ := p.get(t, "/healthz"); status == http.StatusOK {
			return p
		}
		select {
		case <-p.exited:
			t.Fatalf("querycop exited during start-up: %v", p.waitErr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("querycop's /healthz did not answer within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// get requests path from the admin API with the key; status 0 means the
// request failed.
func (p *process) get(t *testing.T, path string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", p.api+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+lifecycleKey)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (p *process) signal(t *testing.T, sig os.Signal) time.Time {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signalling querycop: %v", err)
	}
	return time.Now()
}

// waitExit waits up to timeout for the process to end and returns its exit
// status.
func (p *process) waitExit(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("querycop still running %s after the signal", timeout)
		return -1
	}
}

// connect opens a client session through the pool port.
func (p *process) connect(ctx context.Context) (*pgconn.PgConn, error) {
	return pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable connect_timeout=5",
		p.port, pgtest.UserSCRAM, pgtest.PassSCRAM, pgtest.Database))
}

func (p *process) mustConnect(t *testing.T) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := p.connect(ctx)
	if err != nil {
		t.Fatalf("connecting through querycop: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func mustExec(t *testing.T, c *pgconn.PgConn, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := testkit.Query(ctx, c, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// direct connects to the cluster itself as superuser, bypassing querycop.
func direct(t *testing.T, c *pgtest.Cluster) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", c.SocketDir, c.Port, pgtest.Database))
	if err != nil {
		t.Fatalf("connecting to the cluster directly: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// logLine finds the first log line with message msg.
func logLine(lines []map[string]any, msg string) map[string]any {
	for _, l := range lines {
		if l["message"] == msg {
			return l
		}
	}
	return nil
}

func TestStartupLineAndConfigShowNoSecret(t *testing.T) {
	c := pgtest.Require(t)
	p := startQuerycop(t, c, "GATEKEEPER_SHUTDOWN_TIMEOUT=5s")

	started := logLine(p.stderr.lines(t), "querycop started")
	if started == nil {
		t.Fatalf("no \"querycop started\" line in:\n%s", p.stderr.String())
	}
	if started["version"] != testVersion || started["listen"] != fmt.Sprintf("127.0.0.1:%d", p.port) ||
		started["api"] != strings.TrimPrefix(p.api, "http://") || started["level"] != "info" {
		t.Errorf("start-up line %v: want level info, version %s, listen 127.0.0.1:%d and api %s", started, testVersion, p.port, p.api)
	}
	status, body := p.get(t, "/v1/config")
	var cfg map[string]string
	if status != http.StatusOK || json.Unmarshal(body, &cfg) != nil {
		t.Fatalf("/v1/config = %d %s", status, body)
	}
	if cfg["ADMIN_API_KEY"] != "(set, not shown)" || cfg["GATEKEEPER_LISTEN_PORT"] != strconv.Itoa(p.port) {
		t.Errorf("/v1/config: ADMIN_API_KEY %q, GATEKEEPER_LISTEN_PORT %q; want the key redacted and the port shown",
			cfg["ADMIN_API_KEY"], cfg["GATEKEEPER_LISTEN_PORT"])
	}
	if strings.Contains(string(body), lifecycleKey) {
		t.Errorf("/v1/config shows the admin key: %s", body)
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.waitExit(t, 5*time.Second); code != 0 {
		t.Errorf("exit status %d after SIGTERM with no client, want 0", code)
	}
}

// SIGTERM: /readyz turns 503 and the pool port closes at once, while an
// open transaction can still commit; the process then exits 0.
func TestSIGTERMDrains(t *testing.T) {
	c := pgtest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.ExecIn(ctx, pgtest.Database, `drop table if exists drain_test;
		create table drain_test (id int primary key, note text);
		grant all on drain_test to `+pgtest.UserSCRAM); err != nil {
		t.Fatal(err)
	}
	const timeout = 5 * time.Second
	p := startQuerycop(t, c, "GATEKEEPER_SHUTDOWN_TIMEOUT="+timeout.String())
	if status, _ := p.get(t, "/readyz"); status != http.StatusOK {
		t.Fatalf("/readyz = %d before SIGTERM", status)
	}

	client := p.mustConnect(t)
	mustExec(t, client, "begin; insert into drain_test values (1, 'in flight at SIGTERM')")
	sent := p.signal(t, syscall.SIGTERM)

	// Readiness goes first, so the load balancer stops sending clients.
	var body []byte
	for i := 0; ; i++ {
		var status int
		status, body = p.get(t, "/readyz")
		if status == http.StatusServiceUnavailable {
			break
		}
		if time.Since(sent) > time.Second || i > 1000 {
			t.Fatalf("/readyz = %d %s %s after SIGTERM, want 503", status, body, time.Since(sent))
		}
		time.Sleep(5 * time.Millisecond)
	}
	var ready struct{ Status, Reason string }
	if err := json.Unmarshal(body, &ready); err != nil || ready.Reason != "shutting down" {
		t.Errorf("/readyz after SIGTERM: %s, want reason \"shutting down\"", body)
	}
	// New clients are refused by the kernel: the listener is closed.
	for i := 0; ; i++ {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p.port), time.Second)
		if err == nil {
			conn.Close()
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			break
		}
		if time.Since(sent) > 2*time.Second || i > 1000 {
			t.Fatalf("connecting to the pool port after SIGTERM: %v, want connection refused", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := p.connect(ctx); err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("a new PostgreSQL client after SIGTERM: %v, want connection refused", err)
	}

	// The session in flight finishes its work.
	mustExec(t, client, "insert into drain_test values (2, 'after SIGTERM')")
	mustExec(t, client, "commit")
	if got := mustExec(t, direct(t, c), "select count(*) from drain_test"); got != "2" {
		t.Errorf("%s rows committed, want 2", got)
	}
	if err := client.Close(ctx); err != nil {
		t.Errorf("closing the client: %v", err)
	}
	if code := p.waitExit(t, timeout); code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
	if took := time.Since(sent); took >= timeout {
		t.Errorf("exit %s after SIGTERM although the last session ended; want well within GATEKEEPER_SHUTDOWN_TIMEOUT (%s)", took, timeout)
	}
	lines := p.stderr.lines(t)
	for _, msg := range []string{"shutting down: no new clients, waiting for sessions to end", "querycop stopped"} {
		if logLine(lines, msg) == nil {
			t.Errorf("no %q line logged", msg)
		}
	}
	closed := logLine(lines, "client closed")
	if closed == nil || closed["reason"] != "client-close" {
		t.Errorf("client closed line %v, want reason client-close", closed)
	}
}

// SIGTERM with a session that does not end: after GATEKEEPER_SHUTDOWN_TIMEOUT
// it is closed with 57P01 and the process exits 0.
func TestSIGTERMClosesLingeringSession(t *testing.T) {
	c := pgtest.Require(t)
	const timeout = 2 * time.Second
	p := startQuerycop(t, c, "GATEKEEPER_SHUTDOWN_TIMEOUT="+timeout.String())
	client := p.mustConnect(t)
	mustExec(t, client, "select 1")

	sent := p.signal(t, syscall.SIGTERM)
	// The session still works during the grace period.
	time.Sleep(timeout / 4)
	if got := mustExec(t, client, "select 'still here'"); got != "still here" {
		t.Errorf("during the grace period: %q", got)
	}
	code := p.waitExit(t, timeout+5*time.Second)
	took := time.Since(sent)
	if code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
	if took < timeout-100*time.Millisecond {
		t.Errorf("exited %s after SIGTERM, before GATEKEEPER_SHUTDOWN_TIMEOUT (%s) with a session open", took, timeout)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := testkit.Query(ctx, client, "select 1")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" || pgErr.Severity != "FATAL" || pgErr.Message != "querycop is shutting down" {
		t.Errorf("next query after the shutdown timeout: %v, want FATAL 57P01 \"querycop is shutting down\"", err)
	}
	lines := p.stderr.lines(t)
	if l := logLine(lines, "closing client"); l == nil || l["reason"] != "shutdown" {
		t.Errorf("closing client line %v, want reason shutdown", l)
	}
}

// poll calls cond every 20ms until it holds or timeout passes, and returns
// its last description.
func poll(timeout time.Duration, cond func() (bool, string)) (bool, string) {
	deadline := time.Now().Add(timeout)
	for i := 0; ; i++ {
		ok, state := cond()
		if ok || time.Now().After(deadline) || i > 10000 {
			return ok, state
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An unplanned backend restart with a connection idle in the pool: /readyz
// must not report ready while the backend is down, and the first client
// after the restart must not be handed the dead connection (pool.Acquire:
// "connections found dead ... are replaced without the caller seeing it").
// The cluster is a separate one, since it is stopped.
func TestBackendRestartWithIdlePooledConnection(t *testing.T) {
	pgtest.Require(t)
	c2, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatalf("starting a second cluster: %v", err)
	}
	t.Cleanup(c2.Stop)
	p := startQuerycop(t, c2, "GATEKEEPER_SHUTDOWN_TIMEOUT=2s")
	client := p.mustConnect(t)
	mustExec(t, client, "select 1")
	client.Close(context.Background())
	idle := func() (bool, string) {
		_, body := p.get(t, "/v1/pools")
		var v struct {
			Pools []struct {
				Idle  int `json:"idle"`
				InUse int `json:"in_use"`
			} `json:"pools"`
		}
		_ = json.Unmarshal(body, &v)
		return len(v.Pools) == 1 && v.Pools[0].Idle == 1 && v.Pools[0].InUse == 0, string(body)
	}
	if ok, state := poll(5*time.Second, idle); !ok {
		t.Fatalf("waiting for one idle pooled connection: %s", state)
	}

	if err := c2.StopServer("fast"); err != nil {
		t.Fatal(err)
	}
	// The janitor ticks every second here and the verdict is cached 2s.
	if ok, state := poll(8*time.Second, func() (bool, string) {
		status, body := p.get(t, "/readyz")
		return status == http.StatusServiceUnavailable, fmt.Sprintf("%d %s", status, body)
	}); !ok {
		_, pools := p.get(t, "/v1/pools")
		t.Errorf("/readyz with the backend stopped: still %s 8s later; pools: %s", state, pools)
	}
	if err := c2.StartServer(); err != nil {
		t.Fatal(err)
	}
	if ok, state := poll(8*time.Second, func() (bool, string) {
		status, body := p.get(t, "/readyz")
		return status == http.StatusOK, fmt.Sprintf("%d %s", status, body)
	}); !ok {
		t.Fatalf("/readyz with the backend back: %s", state)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	after, err := p.connect(ctx)
	if err != nil {
		t.Fatalf("connecting after the backend restart: %v", err)
	}
	defer after.Close(context.Background())
	if _, err := testkit.Query(ctx, after, "select 1"); err != nil {
		_, pools := p.get(t, "/v1/pools")
		t.Errorf("first query after the backend restart: %v; want it served on a fresh connection; pools: %s", err, pools)
	}
}
