package wire_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
	"github.com/querycop/querycop/internal/testkit"
	"github.com/querycop/querycop/pool"
)

// Integration tests of token mode: roles whose password is a JWT the test
// made, and token commands from testdata/tokencmd that print those JWTs.

const aadstsMessage = "backend token command failed: AADSTS700082: The refresh token has expired due to inactivity."

// tokJWT returns a new unsigned JWT expiring at exp (whole seconds), unique
// thanks to a random jti.
func tokJWT(exp time.Time) string {
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." +
		enc(fmt.Appendf(nil, `{"exp":%d,"sub":"x","jti":"%s"}`, exp.Unix(), hex.EncodeToString(nonce[:]))) + "." +
		enc([]byte("sig"))
}

// tokEnv is one test's token-command environment: a directory of tokens
// (one file per role), a file counting command runs, and the roles and
// tokens made. Every token is checked to be absent from the gateway log when
// the test ends.
type tokEnv struct {
	t         *testing.T
	c         *pgtest.Cluster
	dir       string
	countFile string

	mu      sync.Mutex
	secrets []string
	logs    []*testkit.LogBuffer
}

// newTokEnv must be called before startGateway, so that its checks run
// after the gateway has stopped and written its last line.
func newTokEnv(t *testing.T, c *pgtest.Cluster) *tokEnv {
	t.Helper()
	e := &tokEnv{t: t, c: c, dir: t.TempDir()}
	e.countFile = filepath.Join(e.dir, "runs.count")
	tokDir := filepath.Join(e.dir, "tokens")
	if err := os.Mkdir(tokDir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TOKENCMD_TOKEN_DIR", tokDir)
	t.Setenv("TOKENCMD_COUNT_FILE", e.countFile)
	t.Setenv("TOKENCMD_TRACE_FILE", filepath.Join(e.dir, "runs.trace"))
	t.Cleanup(func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, l := range e.logs {
			out := l.String()
			for _, s := range e.secrets {
				if strings.Contains(out, s) {
					t.Errorf("the gateway log contains a token (%.20s...)", s)
				}
				// Nor any distinctive part of it (the payload carries the jti).
				if parts := strings.Split(s, "."); len(parts) == 3 && strings.Contains(out, parts[1]) {
					t.Errorf("the gateway log contains a token's payload %q", parts[1])
				}
			}
		}
	})
	return e
}

// watch adds g's log to the secrecy check.
func (e *tokEnv) watch(g *gateway) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.logs = append(e.logs, g.log)
}

func (e *tokEnv) newToken(exp time.Time) string {
	tok := tokJWT(exp)
	e.mu.Lock()
	e.secrets = append(e.secrets, tok)
	e.mu.Unlock()
	return tok
}

// newOpaque returns a new opaque token (not a JWT: its lifetime is
// Token.Lifetime).
func (e *tokEnv) newOpaque() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	tok := "opaque-" + hex.EncodeToString(b[:])
	e.mu.Lock()
	e.secrets = append(e.secrets, tok)
	e.mu.Unlock()
	return tok
}

func (e *tokEnv) exec(sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return e.c.Exec(ctx, sql)
}

// createRole creates a login role whose password is a new token expiring at
// exp, stores the token for the command, and drops the role when the test
// ends. Call it before startGateway.
func (e *tokEnv) createRole(role string, exp time.Time) string {
	e.t.Helper()
	tok := e.newToken(exp)
	if err := e.exec(fmt.Sprintf("drop role if exists %s; create role %s login password '%s'; grant all on database %s to %s",
		role, role, tok, pgtest.Database, role)); err != nil {
		e.t.Fatalf("creating role %s: %v", role, err)
	}
	e.t.Cleanup(func() {
		if err := e.exec(fmt.Sprintf("revoke all on database %s from %s; drop role %s", pgtest.Database, role, role)); err != nil {
			e.t.Logf("dropping role %s: %v", role, err)
		}
	})
	if err := e.writeToken(role, tok); err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// writeToken replaces what the command prints for role, atomically.
func (e *tokEnv) writeToken(role, tok string) error {
	dir := os.Getenv("TOKENCMD_TOKEN_DIR")
	tmp := filepath.Join(dir, "."+role+".tmp")
	if err := os.WriteFile(tmp, []byte(tok+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, role))
}

// setPassword makes tok the role's only valid password.
func (e *tokEnv) setPassword(role, tok string) error {
	return e.exec(fmt.Sprintf("alter role %s password '%s'", role, tok))
}

// rotate issues a new token for role: the server takes it, the old one no
// longer, and the command prints it from now on.
func (e *tokEnv) rotate(role string, exp time.Time) string {
	e.t.Helper()
	tok := e.newToken(exp)
	e.rotateTo(role, tok)
	return tok
}

// rotateTo makes tok the role's password and the command's output.
func (e *tokEnv) rotateTo(role, tok string) {
	e.t.Helper()
	if err := e.setPassword(role, tok); err != nil {
		e.t.Fatal(err)
	}
	if err := e.writeToken(role, tok); err != nil {
		e.t.Fatal(err)
	}
}

// runs returns the users of the command runs so far, one per run.
func (e *tokEnv) runs() []string {
	data, err := os.ReadFile(e.countFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return strings.Fields(string(data))
}

// tokRun is one run of jwt-from-dir.sh: from its start until it printed
// (end is zero if it has not).
type tokRun struct{ start, end time.Time }

// runTimes returns the runs of jwt-from-dir.sh so far, in order of start.
func (e *tokEnv) runTimes() []tokRun {
	data, err := os.ReadFile(os.Getenv("TOKENCMD_TRACE_FILE"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		e.t.Fatal(err)
	}
	byPID := map[string]*tokRun{}
	var out []*tokRun
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		secs, err := strconv.ParseFloat(f[2], 64)
		if err != nil {
			continue
		}
		at := time.Unix(0, int64(secs*1e9))
		switch f[0] {
		case "start":
			r := &tokRun{start: at}
			byPID[f[1]] = r
			out = append(out, r)
		case "end":
			if r := byPID[f[1]]; r != nil {
				r.end = at
			}
		}
	}
	runs := make([]tokRun, len(out))
	for i, r := range out {
		runs[i] = *r
	}
	return runs
}

// tokConnect opens a client session through g; safe to call from any
// goroutine (it never calls t.Fatal). The password is ignored in token mode.
func tokConnect(ctx context.Context, g *gateway, user string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable connect_timeout=20 password=ignored",
		g.port, user, pgtest.Database))
	if err != nil {
		return nil, err
	}
	return pgconn.ConnectConfig(ctx, cfg)
}

// tokQuery runs sql and returns the first row.
func tokQuery(ctx context.Context, c *pgconn.PgConn, sql string) ([]string, error) {
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(res) == 0 || len(res[0].Rows) == 0 {
		return nil, fmt.Errorf("%s: no rows", sql)
	}
	var row []string
	for _, v := range res[0].Rows[0] {
		row = append(row, string(v))
	}
	return row, nil
}

// tokSession connects as user, runs one query that reports the user and the
// backend's PID, and disconnects.
func tokSession(g *gateway, user string) (currentUser, pid string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := tokConnect(ctx, g, user)
	if err != nil {
		return "", "", err
	}
	defer c.Close(context.Background())
	row, err := tokQuery(ctx, c, "select current_user, pg_backend_pid()")
	if err != nil {
		return "", "", err
	}
	return row[0], row[1], nil
}

// tokSuperQuery runs sql as the superuser (Unix socket, trusted) and returns
// the first column of the first row.
func tokSuperQuery(t *testing.T, c *pgtest.Cluster, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", c.SocketDir, c.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	row, err := tokQuery(ctx, conn, sql)
	if err != nil {
		t.Fatal(err)
	}
	return row[0]
}

// tokPoolStats returns the stats of user's pool (zero if there is none).
func tokPoolStats(g *gateway, user string) pool.Stats {
	for _, st := range g.pools.Stats() {
		if st.User == user {
			return st
		}
	}
	return pool.Stats{}
}

// tokWait polls cond every 20ms until it holds or d passes.
func tokWait(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

func tokenBackendConfig(c *pgtest.Cluster, script string) backend.Config {
	cfg := backendConfig(c, backend.TLSVerifyFull) // token mode requires TLS
	p, _ := filepath.Abs(filepath.Join("..", "testdata", "tokencmd", script))
	cfg.Token.Cmd = p
	return cfg
}

// TestTokenStorm: 200 clients of two users arrive at once at a fresh
// gateway, with a command as slow as az: one run per user, each for its user.
func TestTokenStorm(t *testing.T) {
	c := pgtest.Require(t)
	env := newTokEnv(t, c)
	t.Setenv("TOKENCMD_SLEEP", "0.5")
	users := []string{"tok_storm_a", "tok_storm_b"}
	for _, u := range users {
		env.createRole(u, time.Now().Add(time.Hour))
	}
	pcfg := testPoolConfig()
	pcfg.Size = 20
	g := startPooledGateway(t, tokenBackendConfig(c, "jwt-from-dir.sh"), pcfg)
	env.watch(g)

	const clients = 200
	var start, done sync.WaitGroup
	start.Add(1)
	errs := make([]error, clients)
	for i := range clients {
		done.Go(func() {
			user := users[i%2]
			start.Wait()
			got, _, err := tokSession(g, user)
			if err == nil && got != user {
				err = fmt.Errorf("current_user = %q, want %q", got, user)
			}
			errs[i] = err
		})
	}
	start.Done()
	done.Wait()
	failed := 0
	for i, err := range errs {
		if err != nil {
			failed++
			if failed <= 5 {
				t.Errorf("client %d (%s): %v", i, users[i%2], err)
			}
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d clients failed", failed, clients)
	}
	runs := env.runs()
	slices.Sort(runs)
	if !slices.Equal(runs, users) {
		t.Errorf("command runs (user seen by each run) = %v, want exactly one per user %v", runs, users)
	}
	for _, u := range users {
		st := tokPoolStats(g, u)
		if st.User != u || st.Total > pcfg.Size || st.Created > int64(pcfg.Size) || st.DialFailures != 0 {
			t.Errorf("pool %s: %+v; want at most %d connections and no dial failure", u, st, pcfg.Size)
		}
	}
}

// rotator plays the identity provider for jwt-from-dir.sh with
// TOKENCMD_ROTATE_DIR: on each run it issues a new token expiring ttl from
// now, makes it the role's password and the command's output, then lets the
// command print it. PostgreSQL keeps one password per role, so issuing a
// token also revokes the previous one; doing it at the moment the command
// runs keeps that window to the few milliseconds between the ALTER and the
// gateway caching the new token (a dial in that window is refused, evicts,
// and joins the mint in flight). Rotating on a timer instead would revoke the
// cached token seconds before the gateway refreshes it, and every dial in
// between would wait for a mint.
type rotator struct {
	env     *tokEnv
	dir     string
	ttl     time.Duration
	stop    chan struct{}
	stopped chan struct{}

	mu     sync.Mutex
	issued []time.Time // the exp of each token handed to the command, in order
}

// startRotator must be called before startGateway: it is stopped after the
// gateway, which may be waiting for a run it serves.
func startRotator(t *testing.T, env *tokEnv, ttl time.Duration) *rotator {
	r := &rotator{env: env, dir: t.TempDir(), ttl: ttl, stop: make(chan struct{}), stopped: make(chan struct{})}
	t.Setenv("TOKENCMD_ROTATE_DIR", r.dir)
	go r.run(t)
	t.Cleanup(func() {
		close(r.stop)
		<-r.stopped
	})
	return r
}

func (r *rotator) run(t *testing.T) {
	defer close(r.stopped)
	for {
		select {
		case <-r.stop:
			return
		case <-time.After(5 * time.Millisecond):
		}
		reqs, _ := filepath.Glob(filepath.Join(r.dir, "req.*"))
		for _, req := range reqs {
			data, err := os.ReadFile(req)
			if err != nil {
				t.Errorf("rotator: %v", err)
				continue
			}
			role := strings.TrimSpace(string(data))
			exp := time.Now().Add(r.ttl)
			tok := r.env.newToken(exp)
			if err := r.env.setPassword(role, tok); err != nil {
				t.Errorf("rotator: %v", err)
			}
			if err := r.env.writeToken(role, tok); err != nil {
				t.Errorf("rotator: %v", err)
			}
			pid := strings.TrimPrefix(filepath.Base(req), "req.")
			os.Remove(req)
			if err := os.WriteFile(filepath.Join(r.dir, "ack."+pid), nil, 0o600); err != nil {
				t.Errorf("rotator: %v", err)
			}
			r.mu.Lock()
			r.issued = append(r.issued, time.Unix(exp.Unix(), 0)) // as in the JWT
			r.mu.Unlock()
		}
	}
}

func (r *rotator) exps() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.issued)
}

// tokSample is one client session of tokTraffic.
type tokSample struct {
	start   time.Time
	latency time.Duration // connect, first query, close
	pid     string
	err     error
}

// tokTraffic runs three clients of role opening sessions back to back (with
// 20ms pauses) for d, after one first session that pays for the first mint.
// Meanwhile it watches the role's backend connections: how old the oldest
// gets, and how many there are at most.
func tokTraffic(t *testing.T, c *pgtest.Cluster, g *gateway, role string, d time.Duration) (samples []tokSample, maxAge float64, maxBackends int) {
	t.Helper()
	if _, _, err := tokSession(g, role); err != nil {
		t.Fatalf("first session: %v", err)
	}
	super, err := pgconn.Connect(context.Background(), fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", c.SocketDir, c.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(context.Background())

	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			for i := 0; i < 2000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				user, pid, err := tokSession(g, role)
				if err == nil && user != role {
					err = fmt.Errorf("current_user = %q", user)
				}
				mu.Lock()
				samples = append(samples, tokSample{start, time.Since(start), pid, err})
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		row, err := tokQuery(context.Background(), super, fmt.Sprintf(
			"select count(*), coalesce(max(extract(epoch from now() - backend_start)), 0) from pg_stat_activity where usename = '%s'", role))
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(row[0])
		age, _ := strconv.ParseFloat(row[1], 64)
		maxAge, maxBackends = max(maxAge, age), max(maxBackends, n)
	}
	close(stop)
	wg.Wait()
	return samples, maxAge, maxBackends
}

// tokCheckTraffic makes the assertions common to both refresh tests and
// returns how many refreshes were late:
//
//   - no client error;
//   - every command run after the first should start before the token of the
//     run before it reached its UseUntil (useUntil(i) for run i): a
//     background refresh, not a mint some dial had to wait for. A run that
//     starts later is counted as late and reported to the caller: with a 10s
//     usable window the refresh has 2s of slack for a 1s command, which a
//     heavily loaded machine (timers and fork late under -race) can eat once
//     in a while; a gateway that does not refresh ahead is late every time.
//   - at most one client session (>= slow) was in flight for the whole of an
//     on-time run, i.e. blocked from before the command started until after
//     it printed, though a valid token was cached. Sessions that are merely
//     slow do not count: on a loaded machine a session or a dial can take
//     more than a second with no mint involved.
//   - connections retired for their token's horizon (its expiry less the
//     login safety, ~19s after its mint; the pool lifetime is 1h): none
//     is seen older than that;
//   - the pool within its size; the command run once per refresh.
func tokCheckTraffic(t *testing.T, g *gateway, env *tokEnv, role string, size int, d, slow time.Duration,
	samples []tokSample, maxAge float64, maxBackends int, useUntil func(i int, r tokRun) time.Time) (late int) {
	t.Helper()
	runs := env.runTimes()
	isLate := make([]bool, len(runs))
	for i := 1; i < len(runs); i++ {
		if prev := useUntil(i-1, runs[i-1]); !runs[i].start.Before(prev) {
			isLate[i] = true
			late++
			t.Logf("command run %d started at %s, after the token of run %d stopped being usable (UseUntil %s): late refresh",
				i+1, runs[i].start.Format("15:04:05.000"), i, prev.Format("15:04:05.000"))
		}
	}
	var errs []string
	var blocked, excused, slowOnes []tokSample
	pids := map[string]bool{}
	for _, r := range samples {
		if r.err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", r.start.Format("15:04:05.000"), r.err))
			continue
		}
		pids[r.pid] = true
		if r.latency < slow {
			continue
		}
		slowOnes = append(slowOnes, r)
		end := r.start.Add(r.latency)
		for i, run := range runs {
			if !run.end.IsZero() && !r.start.After(run.start) && end.After(run.end) {
				if isLate[i] {
					excused = append(excused, r)
				} else {
					blocked = append(blocked, r)
				}
				break
			}
		}
	}
	var runTimes []string
	for _, run := range runs {
		runTimes = append(runTimes, fmt.Sprintf("%s-%s", run.start.Format("15:04:05.000"), run.end.Format("05.000")))
	}
	st := tokPoolStats(g, role)
	t.Logf("%d sessions on %d backends; command runs %v; sessions >= %s: %v; oldest backend seen %.1fs, most at once %d; pool: created %d, retired %d, closed %v",
		len(samples), len(pids), runTimes, slow, tokFormatSamples(slowOnes), maxAge, maxBackends, st.Created, st.Retired, st.Closed)
	if len(errs) > 0 {
		t.Errorf("%d of %d sessions failed, e.g. %v", len(errs), len(samples), errs[:min(5, len(errs))])
	}
	if len(samples) < 100 {
		t.Errorf("only %d sessions ran", len(samples))
	}
	if len(excused) > 0 {
		t.Logf("%d sessions waited for a late refresh: %v", len(excused), tokFormatSamples(excused))
	}
	if len(blocked) > 1 {
		t.Errorf("%d sessions were in flight from before a command run started until after it printed, though the token before was still usable (a dial waited for a mint?): %v",
			len(blocked), tokFormatSamples(blocked))
	}
	// One run at the start, then one per ~10s (the 20s token's expiry less
	// the 10s margin).
	if lo, hi := 1+int(d/(12*time.Second)), 2+int(d/(7*time.Second)); len(runs) < lo || len(runs) > hi {
		t.Errorf("the command ran %d times in %s, want %d to %d: refreshed ahead, not per dial", len(runs), d, lo, hi)
	}
	if st.Retired == 0 || st.Closed["lifetime"] == 0 {
		t.Errorf("pool stats: retired %d, closed %v; want connections retired for their token's horizon (lifetime is 1h)", st.Retired, st.Closed)
	}
	if maxAge >= 19.5 {
		t.Errorf("a backend connection of %s was %.1fs old: not retired before its token's horizon (UseUntil is ~19s after the mint)", role, maxAge)
	}
	if maxBackends > size || st.Closed["resize"] > 0 {
		t.Errorf("the pool (Size=%d, never resized) had up to %d backend connections and closed %d as surplus (\"resize\")",
			size, maxBackends, st.Closed["resize"])
	}
	return late
}

func tokFormatSamples(ss []tokSample) []string {
	var out []string
	for _, s := range ss {
		out = append(out, fmt.Sprintf("%s took %s", s.start.Format("15:04:05.000"), s.latency.Round(time.Millisecond)))
	}
	return out
}

// TestTokenRefreshAhead: under steady traffic, tokens of 20s with a 10s margin
// are refreshed in the background by a command that takes 1s (as az does),
// no client waits for it, and connections are retired before their token's
// horizon.
//
// "jwt" rotates real JWTs (exp now+20s): each run of the command issues a new
// one, which also revokes the previous one (PostgreSQL keeps one password per
// role), so a dial that races with that revocation is refused and redone
// with the new token. That is an artefact of the emulation (a real identity
// provider leaves the previous token valid until its exp). "opaque" has no
// such artefact: one unchanging password, printed as an opaque token whose
// lifetime is Token.Lifetime (20s).
func TestTokenRefreshAhead(t *testing.T) {
	c := pgtest.Require(t)
	const (
		ttl    = 20 * time.Second
		margin = 10 * time.Second
		slow   = time.Second // = TOKENCMD_SLEEP
	)
	pcfg := testPoolConfig()
	pcfg.Size = 3
	pcfg.MaxConnLifetime = time.Hour // retirement is driven by the token horizon only
	pcfg.AcquireTimeout = 30 * time.Second
	late := 0
	defer func() {
		// Both variants refresh at least twice; a gateway that does not
		// refresh ahead is late every time, a loaded machine once at most.
		if late > 1 {
			t.Errorf("%d background refreshes started after the token they replace stopped being usable; want at most 1", late)
		}
	}()

	t.Run("jwt", func(t *testing.T) {
		const role = "tok_refresh_jwt"
		const d = 25 * time.Second // three background refreshes
		env := newTokEnv(t, c)
		t.Setenv("TOKENCMD_SLEEP", "1")
		env.createRole(role, time.Now().Add(ttl))
		rot := startRotator(t, env, ttl)
		cfg := tokenBackendConfig(c, "jwt-from-dir.sh")
		cfg.Token.RefreshMargin = margin
		g := startPooledGateway(t, cfg, pcfg)
		env.watch(g)

		samples, maxAge, maxBackends := tokTraffic(t, c, g, role, d)
		exps := rot.exps()
		late += tokCheckTraffic(t, g, env, role, pcfg.Size, d, slow, samples, maxAge, maxBackends, func(i int, _ tokRun) time.Time {
			if i >= len(exps) {
				return time.Time{} // the run never got its token
			}
			return exps[i].Add(-testLoginSafety)
		})
	})

	t.Run("opaque", func(t *testing.T) {
		const role = "tok_refresh_opaque"
		const d = 22 * time.Second // two background refreshes
		env := newTokEnv(t, c)
		t.Setenv("TOKENCMD_SLEEP", "1")
		env.createRole(role, time.Now().Add(time.Hour))
		env.rotateTo(role, env.newOpaque())
		cfg := tokenBackendConfig(c, "jwt-from-dir.sh")
		cfg.Token.Lifetime = ttl
		cfg.Token.RefreshMargin = margin
		g := startPooledGateway(t, cfg, pcfg)
		env.watch(g)

		samples, maxAge, maxBackends := tokTraffic(t, c, g, role, d)
		// An opaque token expires Lifetime after its mint started (a little
		// before the script's own start time).
		late += tokCheckTraffic(t, g, env, role, pcfg.Size, d, slow, samples, maxAge, maxBackends, func(_ int, r tokRun) time.Time {
			return r.start.Add(ttl - testLoginSafety)
		})
	})
}

// TestTokenRotation: a session keeps its backend across a rotation; idle
// connections made with the old token are retired at its UseUntil and new
// ones use the new token.
func TestTokenRotation(t *testing.T) {
	c := pgtest.Require(t)
	const role = "tok_rotate"
	env := newTokEnv(t, c)
	exp1 := time.Now().Add(12 * time.Second)
	env.createRole(role, exp1)
	useUntil1 := time.Unix(exp1.Unix(), 0).Add(-testLoginSafety)
	cfg := tokenBackendConfig(c, "jwt-from-dir.sh")
	cfg.Token.RefreshMargin = 6 * time.Second
	pcfg := testPoolConfig()
	pcfg.Size = 3
	g := startPooledGateway(t, cfg, pcfg) // pool lifetime 1h: janitor tick 1s
	env.watch(g)
	ctx := context.Background()

	firstDial := time.Now()
	s1 := g.mustConnect(t, role, "x")
	pid1 := queryValue(t, s1, "select pg_backend_pid()")
	_, pid2, err := tokSession(g, role) // a second backend, left idle in the pool
	if err != nil {
		t.Fatal(err)
	}
	if pid2 == pid1 {
		t.Fatalf("the second session shared the first one's backend %s", pid1)
	}
	if !tokWait(5*time.Second, func() bool { return tokPoolStats(g, role).Idle == 1 }) {
		t.Fatal("the second backend did not return to the pool")
	}

	env.rotate(role, time.Now().Add(time.Hour))
	rotatedAt := time.Now()
	if got := queryValue(t, s1, "select current_user"); got != role {
		t.Errorf("established session after the rotation: current_user = %q", got)
	}

	// The idle connection made with the old token is closed around its
	// UseUntil (the janitor retires one tick early), not before, not long after.
	var closedAt time.Time
	if !tokWait(time.Until(useUntil1)+5*time.Second, func() bool {
		if tokPoolStats(g, role).Closed["lifetime"] >= 1 {
			closedAt = time.Now()
			return true
		}
		return false
	}) {
		t.Fatalf("no connection retired by %s (old token's UseUntil %s)", time.Now().Format("15:04:05.000"), useUntil1.Format("15:04:05.000"))
	}
	t.Logf("rotated at %s; old token UseUntil %s; idle connection retired by %s",
		rotatedAt.Format("15:04:05.000"), useUntil1.Format("15:04:05.000"), closedAt.Format("15:04:05.000"))
	// Retirements are spread over the last fifth of the token's window (from
	// the connection's creation to UseUntil), and the janitor acts up to a
	// tick early.
	early := useUntil1.Sub(firstDial)/5 + time.Second + 500*time.Millisecond
	if closedAt.Before(useUntil1.Add(-early)) || closedAt.After(useUntil1.Add(2*time.Second+500*time.Millisecond)) {
		t.Errorf("old idle connection retired at %s, want within [UseUntil-%s, UseUntil+2 ticks] around %s",
			closedAt.Format("15:04:05.000"), early, useUntil1.Format("15:04:05.000"))
	}
	if n := tokSuperQuery(t, c, "select count(*) from pg_stat_activity where pid = "+pid2); n != "0" {
		t.Errorf("backend %s made with the old token still exists after its retirement", pid2)
	}

	// New sessions get new backends, which can only have authenticated with
	// the new token: the server no longer takes the old one.
	user3, pid3, err := tokSession(g, role)
	if err != nil || user3 != role {
		t.Fatalf("new session after the rotation: %q, %v", user3, err)
	}
	if pid3 == pid1 || pid3 == pid2 {
		t.Errorf("new session got backend %s, one of the old token's (%s, %s)", pid3, pid1, pid2)
	}
	// The established session still works, on its own backend.
	if got := queryValue(t, s1, "select pg_backend_pid()"); got != pid1 {
		t.Errorf("established session moved from backend %s to %s", pid1, got)
	}
	if runs := env.runs(); len(runs) < 2 {
		t.Errorf("command ran %d times, want at least 2 (old and new token)", len(runs))
	}
	// When it ends, its backend (past its retirement) is closed, not pooled.
	s1.Close(ctx)
	if !tokWait(5*time.Second, func() bool { return tokPoolStats(g, role).Closed["lifetime"] >= 2 }) {
		t.Errorf("after the old session ended, closed = %v; want its backend closed for lifetime", tokPoolStats(g, role).Closed)
	}
}

// TestTokenRevocation: the cached token is refused (rotated before its exp):
// the dial evicts it, mints the new one and succeeds; the client sees nothing.
func TestTokenRevocation(t *testing.T) {
	c := pgtest.Require(t)
	const role = "tok_revoke"
	env := newTokEnv(t, c)
	env.createRole(role, time.Now().Add(time.Hour)) // token A
	pcfg := testPoolConfig()
	pcfg.Size = 2
	g := startPooledGateway(t, tokenBackendConfig(c, "jwt-from-dir.sh"), pcfg)
	env.watch(g)

	s1 := g.mustConnect(t, role, "x") // holds the only connection
	pid1 := queryValue(t, s1, "select pg_backend_pid()")
	if runs := env.runs(); len(runs) != 1 {
		t.Fatalf("command ran %d times, want 1", len(runs))
	}

	env.rotate(role, time.Now().Add(time.Hour)) // token B; A is refused from now on

	// A second session needs a new backend connection.
	user, pid2, err := tokSession(g, role)
	if err != nil {
		t.Fatalf("session after the revocation: %v (want the gateway to retry with a new token)", err)
	}
	if user != role || pid2 == pid1 {
		t.Errorf("session after the revocation: user %q backend %s (first %s)", user, pid2, pid1)
	}
	if runs := env.runs(); len(runs) != 2 {
		t.Errorf("command ran %d times, want 2 (A, then B after A was refused)", len(runs))
	}
	if got := queryValue(t, s1, "select current_user"); got != role {
		t.Errorf("established session: current_user = %q", got)
	}
	// B is cached now: the next session needs no run.
	if _, _, err := tokSession(g, role); err != nil {
		t.Errorf("third session: %v", err)
	}
	if st := tokPoolStats(g, role); st.DialFailures != 0 {
		t.Errorf("dial failures = %d, want 0: the refusal is retried inside the dial", st.DialFailures)
	}
	if runs := env.runs(); len(runs) != 2 {
		t.Errorf("command ran %d times, want still 2", len(runs))
	}
}

// TestTokenCommandFails: a failing command reaches the client as FATAL and
// the log as WARN; while it fails, existing sessions keep working and runs
// back off; once it works again, clients get in.
func TestTokenCommandFails(t *testing.T) {
	c := pgtest.Require(t)

	t.Run("fail-aadsts", func(t *testing.T) {
		env := newTokEnv(t, c)
		g := startGateway(t, tokenBackendConfig(c, "fail-aadsts.sh"))
		env.watch(g)
		_, _, err := tokSession(g, "tok_fail_x")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Message != aadstsMessage || pgErr.Severity != "FATAL" || pgErr.Code != "08001" {
			t.Fatalf("client got %v, want FATAL 08001 %q", err, aadstsMessage)
		}
		if !tokHasWarn(g.log.String(), aadstsMessage) {
			t.Errorf("no WARN log line with %q:\n%s", aadstsMessage, g.log.String())
		}
	})

	t.Run("switchable", func(t *testing.T) {
		const role = "tok_switch"
		env := newTokEnv(t, c)
		flag := filepath.Join(t.TempDir(), "fail")
		t.Setenv("TOKENCMD_FAIL_FLAG", flag)
		env.createRole(role, time.Now().Add(time.Hour)) // token A
		pcfg := testPoolConfig()
		pcfg.Size = 3
		g := startPooledGateway(t, tokenBackendConfig(c, "switchable.sh"), pcfg)
		env.watch(g)

		s1 := g.mustConnect(t, role, "x")
		pid1 := queryValue(t, s1, "select pg_backend_pid()")

		// az loses its login, and the server stops taking A: the next
		// backend connection needs a mint, which fails.
		if err := os.WriteFile(flag, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		env.rotate(role, time.Now().Add(time.Hour)) // B, unreachable while failing
		runsBefore := len(env.runs())

		attempts, unexpected := 0, 0
		for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			attempts++
			_, _, err := tokSession(g, role)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Message != aadstsMessage || pgErr.Severity != "FATAL" {
				unexpected++
				if unexpected <= 3 {
					t.Errorf("attempt %d while the command fails: %v; want FATAL %q", attempts, err, aadstsMessage)
				}
			}
			// The established session is untouched.
			if got := queryValue(t, s1, "select pg_backend_pid()"); got != pid1 {
				t.Fatalf("established session moved to backend %s", got)
			}
		}
		failedRuns := len(env.runs()) - runsBefore
		t.Logf("%d client attempts, %d command runs while failing", attempts, failedRuns)
		if failedRuns < 2 || failedRuns > 4 || attempts < 10 {
			t.Errorf("%d command runs for %d client attempts over 4s; want 2 to 4 (back-off 1s, 2s, ...)", failedRuns, attempts)
		}
		if !tokHasWarn(g.log.String(), aadstsMessage) {
			t.Errorf("no WARN log line with %q", aadstsMessage)
		}

		// az works again: a client gets in once the back-off has passed.
		if err := os.Remove(flag); err != nil {
			t.Fatal(err)
		}
		fixedAt := time.Now()
		var lastErr error
		if !tokWait(20*time.Second, func() bool {
			var user string
			user, _, lastErr = tokSession(g, role)
			return lastErr == nil && user == role
		}) {
			t.Fatalf("no client got in within 20s after the command recovered; last error: %v", lastErr)
		}
		t.Logf("a client got in %s after the command recovered", time.Since(fixedAt).Round(time.Millisecond))
		if got := queryValue(t, s1, "select current_user"); got != role {
			t.Errorf("established session: current_user = %q", got)
		}
	})
}

func tokHasWarn(log, text string) bool {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, `"level":"warn"`) && strings.Contains(line, text) {
			return true
		}
	}
	return false
}

// TestTokenCommandHangs: the command is killed, with its whole process
// group, after Token.Timeout; the client gets FATAL saying so.
func TestTokenCommandHangs(t *testing.T) {
	c := pgtest.Require(t)
	env := newTokEnv(t, c)
	pidFile := filepath.Join(t.TempDir(), "pid")
	t.Setenv("TOKENCMD_PID_FILE", pidFile)
	cfg := tokenBackendConfig(c, "hang.sh")
	cfg.Token.Timeout = time.Second
	g := startGateway(t, cfg)
	env.watch(g)

	errc := make(chan error, 1)
	start := time.Now()
	go func() {
		_, _, err := tokSession(g, "tok_hang")
		errc <- err
	}()
	// While hang.sh runs, learn its process group.
	var pid, pgid int
	if !tokWait(5*time.Second, func() bool {
		data, err := os.ReadFile(pidFile)
		if err != nil || !strings.HasSuffix(string(data), "\n") {
			return false
		}
		pid, _ = strconv.Atoi(strings.TrimSpace(string(data)))
		st, ok := testkit.ReadProcStat(pid)
		pgid = st.PGID
		return ok
	}) {
		t.Fatal("hang.sh did not start (no PID file)")
	}
	if pgid == os.Getpid() || pgid == 0 {
		t.Fatalf("hang.sh runs in process group %d, not its own", pgid)
	}
	err := <-errc
	elapsed := time.Since(start)
	const want = "backend token command failed: timed out after 1s"
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Message != want || pgErr.Severity != "FATAL" {
		t.Fatalf("client got %v, want FATAL %q", err, want)
	}
	if elapsed > 5*time.Second {
		t.Errorf("the client waited %s for a command with a 1s timeout", elapsed)
	}
	testkit.AssertGroupGone(t, pid, pgid)
	if !tokHasWarn(g.log.String(), want) {
		t.Errorf("no WARN log line with %q", want)
	}

	// The next client is told the same (at once while backing off, or when
	// the retry the Source makes in the background times out in turn).
	_, _, err = tokSession(g, "tok_hang")
	if !errors.As(err, &pgErr) || pgErr.Message != want {
		t.Errorf("second client got %v, want %q", err, want)
	}
}
