package token

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// fakeMinter stands in for the token command: it counts calls, remembers
// each call's Target and answers with what its func says.
type fakeMinter struct {
	mu      sync.Mutex
	calls   int
	targets []Target
	starts  []time.Time
	// mint answers call n (1-based). Nil: "tok-<user>-<n>", an opaque token.
	mint func(ctx context.Context, n int, t Target) (string, error)
	// started, if set, receives n when call n begins.
	started chan int
}

func (f *fakeMinter) Mint(ctx context.Context, t Target) (string, error) {
	f.mu.Lock()
	f.calls++
	n := f.calls
	f.targets = append(f.targets, t)
	f.starts = append(f.starts, time.Now())
	mint, started := f.mint, f.started
	f.mu.Unlock()
	if started != nil {
		started <- n
	}
	if mint == nil {
		return fmt.Sprintf("tok-%s-%d", t.User, n), nil
	}
	return mint(ctx, n, t)
}

func (f *fakeMinter) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeMinter) Targets() []Target {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Target(nil), f.targets...)
}

func (f *fakeMinter) Start(n int) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.starts[n-1]
}

var (
	srcTarget = Target{Host: "db.example.com", Port: 5432, User: "alice", Database: "app"}
	bobTarget = Target{Host: "db.example.com", Port: 5432, User: "bob", Database: "app"}
)

// reuseConfig is the production shape: reuse on, opaque tokens last an hour.
func reuseConfig() Config {
	return Config{Timeout: 10 * time.Second, Lifetime: time.Hour, RefreshMargin: 5 * time.Minute, Reuse: true}
}

func newTestSource(t *testing.T, cfg Config, m Minter) *Source {
	t.Helper()
	s := NewSource(cfg, m)
	t.Cleanup(s.Close)
	return s
}

func mustToken(t *testing.T, s *Source, tg Target) Token {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, err := s.Token(ctx, tg)
	if err != nil {
		t.Fatalf("Token(%s): %v", tg.User, err)
	}
	return tok
}

// statusOf returns the Status of user, failing if there is none.
func statusOf(t *testing.T, s *Source, user string) Status {
	t.Helper()
	for _, st := range s.Status() {
		if st.User == user {
			return st
		}
	}
	t.Fatalf("no Status for user %q in %+v", user, s.Status())
	return Status{}
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func aadstsError() error {
	return &Error{Reason: "AADSTS700082: The refresh token has expired due to inactivity.", Err: errors.New("exit status 1")}
}

func TestSourceReuse(t *testing.T) {
	t.Parallel()
	m := &fakeMinter{}
	s := newTestSource(t, reuseConfig(), m)
	before := time.Now()
	a := mustToken(t, s, srcTarget)
	b := mustToken(t, s, srcTarget)
	if a.Value != "tok-alice-1" || b != a {
		t.Errorf("Token twice = %+v then %+v, want the same tok-alice-1 both times", a, b)
	}
	if n := m.Calls(); n != 1 {
		t.Errorf("minter called %d times, want 1", n)
	}
	// Opaque token: Expiry is the mint time plus Lifetime; UseUntil the margin before.
	if a.Expiry.Before(before.Add(time.Hour)) || a.Expiry.After(time.Now().Add(time.Hour)) {
		t.Errorf("Expiry = %v, want about now+1h", a.Expiry)
	}
	if want := a.Expiry.Add(-40 * time.Second); !a.UseUntil.Equal(want) {
		t.Errorf("UseUntil = %v, want Expiry less the default login safety (10s+30s) = %v", a.UseUntil, want)
	}
	if st := statusOf(t, s, "alice"); !st.RefreshFrom.Equal(a.Expiry.Add(-5*time.Minute)) || !st.NextRefresh.Equal(st.RefreshFrom) {
		t.Errorf("RefreshFrom %v NextRefresh %v, want both Expiry less the margin (5m) = %v", st.RefreshFrom, st.NextRefresh, a.Expiry.Add(-5*time.Minute))
	}
	if got := m.Targets()[0]; got != srcTarget {
		t.Errorf("minter got Target %+v, want %+v", got, srcTarget)
	}

	// A JWT's own exp wins over Lifetime.
	exp := time.Now().Add(30 * time.Minute).Truncate(time.Millisecond)
	jm := &fakeMinter{mint: func(context.Context, int, Target) (string, error) { return jwtExpiringAt(exp, "r"), nil }}
	js := newTestSource(t, reuseConfig(), jm)
	jt := mustToken(t, js, srcTarget)
	if jt.Expiry.Sub(exp).Abs() > time.Microsecond || jt.UseUntil.Sub(exp.Add(-40*time.Second)).Abs() > time.Microsecond {
		t.Errorf("JWT token Expiry %v UseUntil %v, want %v and 40s before", jt.Expiry, jt.UseUntil, exp)
	}
}

func TestSourceNoReuse(t *testing.T) {
	t.Parallel()
	m := &fakeMinter{}
	cfg := reuseConfig()
	cfg.Reuse = false
	s := newTestSource(t, cfg, m)
	seen := map[string]bool{}
	for i := 1; i <= 3; i++ {
		tok := mustToken(t, s, srcTarget)
		if want := fmt.Sprintf("tok-alice-%d", i); tok.Value != want {
			t.Errorf("call %d: Token = %q, want %q (a fresh mint)", i, tok.Value, want)
		}
		seen[tok.Value] = true
	}
	if n := m.Calls(); n != 3 || len(seen) != 3 {
		t.Errorf("minter called %d times for 3 Token calls (%d distinct values), want 3 and 3", n, len(seen))
	}
}

func TestSourceSingleFlight(t *testing.T) {
	t.Parallel()
	t.Run("one user", func(t *testing.T) {
		t.Parallel()
		m := &fakeMinter{mint: func(_ context.Context, n int, tg Target) (string, error) {
			time.Sleep(300 * time.Millisecond) // az takes its time
			return fmt.Sprintf("tok-%s-%d", tg.User, n), nil
		}}
		s := newTestSource(t, reuseConfig(), m)
		const n = 100
		got := make([]string, n)
		errs := make([]error, n)
		var start, done sync.WaitGroup
		start.Add(1)
		for i := range n {
			done.Go(func() {
				start.Wait()
				tok, err := s.Token(context.Background(), srcTarget)
				got[i], errs[i] = tok.Value, err
			})
		}
		start.Done()
		done.Wait()
		for i := range n {
			if errs[i] != nil || got[i] != "tok-alice-1" {
				t.Fatalf("caller %d got %q, %v; want tok-alice-1", i, got[i], errs[i])
			}
		}
		if c := m.Calls(); c != 1 {
			t.Errorf("%d simultaneous callers ran the command %d times, want 1", n, c)
		}
	})
	t.Run("two users", func(t *testing.T) {
		t.Parallel()
		m := &fakeMinter{mint: func(_ context.Context, n int, tg Target) (string, error) {
			time.Sleep(300 * time.Millisecond)
			return "tok-for-" + tg.User, nil
		}}
		s := newTestSource(t, reuseConfig(), m)
		const n = 100
		targets := []Target{srcTarget, bobTarget}
		got := make([]string, n)
		errs := make([]error, n)
		var start, done sync.WaitGroup
		start.Add(1)
		for i := range n {
			done.Go(func() {
				start.Wait()
				tok, err := s.Token(context.Background(), targets[i%2])
				got[i], errs[i] = tok.Value, err
			})
		}
		start.Done()
		done.Wait()
		for i := range n {
			if want := "tok-for-" + targets[i%2].User; errs[i] != nil || got[i] != want {
				t.Fatalf("caller %d (%s) got %q, %v; want %q", i, targets[i%2].User, got[i], errs[i], want)
			}
		}
		if c := m.Calls(); c != 2 {
			t.Fatalf("minter called %d times for two users, want 2", c)
		}
		users := map[string]int{}
		for _, tg := range m.Targets() {
			users[tg.User]++
		}
		if users["alice"] != 1 || users["bob"] != 1 {
			t.Errorf("minter Targets by user = %v, want alice:1 bob:1", users)
		}
	})
}

// While a background refresh runs, Token hands out the cached token at once;
// the refresh starts by itself at the expiry less the margin.
func TestSourceRefreshAhead(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var exp1, exp2 time.Time
	started := make(chan int, 10)
	m := &fakeMinter{started: started, mint: func(ctx context.Context, n int, _ Target) (string, error) {
		switch n {
		case 1:
			return jwtExpiringAt(exp1, "one"), nil
		case 2:
			select { // the command is slow: blocked until the test says
			case <-release:
			case <-ctx.Done():
				return "", &Error{Reason: "canceled"}
			}
			return jwtExpiringAt(exp2, "two"), nil
		}
		return "", &Error{Reason: fmt.Sprintf("unexpected call %d", n)}
	}}
	cfg := reuseConfig()
	cfg.RefreshMargin = time.Second
	s := newTestSource(t, cfg, m)
	s.LoginSafety = 200 * time.Millisecond

	exp1 = time.Now().Add(3 * time.Second) // refreshed after 2s, usable for 2.8s
	exp2 = time.Now().Add(time.Hour)
	first := mustToken(t, s, srcTarget)
	<-started
	mintStart := m.Start(1)
	if first.Value != jwtExpiringAt(exp1, "one") {
		t.Fatalf("first Token is not the first JWT")
	}
	wantUseUntil := time.UnixMilli(exp1.UnixMilli()).Add(-200 * time.Millisecond)
	if first.UseUntil.Sub(wantUseUntil).Abs() > time.Microsecond {
		t.Errorf("UseUntil = %v, want exp less the login safety = %v", first.UseUntil, wantUseUntil)
	}
	_ = mintStart
	st := statusOf(t, s, "alice")
	wantNext := time.UnixMilli(exp1.UnixMilli()).Add(-time.Second)
	if !st.Valid || st.Mints != 1 || st.NextRefresh.IsZero() || st.NextRefresh.Sub(wantNext).Abs() > time.Microsecond {
		t.Errorf("Status after the first mint = %+v; want valid, 1 mint, NextRefresh = %v (exp less the margin)", st, wantNext)
	}
	if !st.NextRefresh.Before(first.UseUntil) {
		t.Errorf("NextRefresh %v is not before UseUntil %v", st.NextRefresh, first.UseUntil)
	}

	// Nobody calls Token: the refresh must start on its own.
	select {
	case n := <-started:
		if n != 2 {
			t.Fatalf("call %d started, want 2", n)
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("no background refresh within 3s of the first mint (NextRefresh was %v)", st.NextRefresh)
	}
	if at := m.Start(2); at.Before(st.NextRefresh.Add(-10 * time.Millisecond)) {
		t.Errorf("background refresh started at %v, before NextRefresh %v", at, st.NextRefresh)
	}

	// The command is now blocked. Token must not wait for it: the cached
	// token is still usable. A context that ends long before anything could
	// unblock the minter proves it.
	for range 3 {
		called := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		tok, err := s.Token(ctx, srcTarget)
		cancel()
		if !called.Before(first.UseUntil) {
			// The machine was too slow to ask while the token was usable;
			// then waiting for the refresh is right.
			t.Logf("Token called at %v, after UseUntil %v: not checked", called, first.UseUntil)
			break
		}
		if err != nil {
			t.Fatalf("Token during the background refresh: %v (it waited for the command)", err)
		}
		if tok.Value != first.Value {
			t.Fatalf("Token during the background refresh returned a different token")
		}
	}
	if c := m.Calls(); c != 2 {
		t.Errorf("minter called %d times, want 2 (one background refresh, no caller-driven mint)", c)
	}

	close(release)
	waitFor(t, 2*time.Second, "the refreshed token to be cached", func() bool { return statusOf(t, s, "alice").Mints == 2 })
	if tok := mustToken(t, s, srcTarget); tok.Value != jwtExpiringAt(exp2, "two") {
		t.Errorf("after the refresh Token is not the new JWT")
	}
	if c := m.Calls(); c != 2 {
		t.Errorf("minter called %d times, want 2", c)
	}
	st = statusOf(t, s, "alice")
	if st.ConsecutiveFailures != 0 || st.Failures != 0 || st.LastError != "" {
		t.Errorf("Status = %+v, want no failures", st)
	}
}

// A refresh is not run for a key that nobody used during its lifetime.
func TestSourceRefreshSkipsUnusedKeys(t *testing.T) {
	t.Parallel()
	m := &fakeMinter{}
	cfg := reuseConfig()
	cfg.Lifetime = 300 * time.Millisecond
	cfg.RefreshMargin = 100 * time.Millisecond
	s := newTestSource(t, cfg, m)
	s.LoginSafety = 20 * time.Millisecond
	mustToken(t, s, srcTarget)
	// Refreshes at ~200ms (used at 0, within the 300ms lifetime), ~400ms
	// (last use 400ms ago > 300ms: skipped). Nothing after that.
	time.Sleep(900 * time.Millisecond)
	if c := m.Calls(); c != 2 {
		t.Errorf("minter called %d times for a key used once, want 2 (one refresh, then it lapses)", c)
	}
}

// After a failure with no usable token there are no background retries; a
// need after demandFloor runs the command again instead of getting the
// stored error, and simultaneous needs share that run.
func TestSourceFreshFailure(t *testing.T) {
	t.Parallel()
	var fail atomic.Bool
	fail.Store(true)
	m := &fakeMinter{mint: func(_ context.Context, n int, tg Target) (string, error) {
		if fail.Load() {
			return "", aadstsError()
		}
		time.Sleep(50 * time.Millisecond)
		return fmt.Sprintf("tok-ok-%d", n), nil
	}}
	s := newTestSource(t, reuseConfig(), m)
	s.demandFloor = 300 * time.Millisecond

	_, err1 := s.Token(context.Background(), srcTarget)
	var tokErr *Error
	if !errors.As(err1, &tokErr) || !strings.HasPrefix(err1.Error(), "backend token command failed: AADSTS700082") {
		t.Fatalf("first Token: %v (%T), want *Error backend token command failed: AADSTS700082...", err1, err1)
	}
	st := statusOf(t, s, "alice")
	if st.Valid || st.Failures != 1 || st.ConsecutiveFailures != 1 || !strings.Contains(st.LastError, "AADSTS700082") || st.RetryAt.IsZero() || !st.NextRefresh.IsZero() {
		t.Errorf("Status after a failure with no usable token = %+v; want no background retry scheduled, RetryAt set", st)
	}
	// Within the floor: the same error at once, without running the command.
	for range 5 {
		if _, err2 := s.Token(context.Background(), srcTarget); err2 != err1 {
			t.Fatalf("Token within the floor = %v, want the same error %v", err2, err1)
		}
	}
	if c := m.Calls(); c != 1 {
		t.Fatalf("minter called %d times within the floor, want 1", c)
	}
	// The command recovers. Nobody needs a token for a while: no run.
	fail.Store(false)
	time.Sleep(600 * time.Millisecond)
	if c := m.Calls(); c != 1 {
		t.Fatalf("minter called %d times with nobody needing a token, want 1 (no background retries)", c)
	}
	// A background need (a pool keeping idle connections) past the floor
	// but within the back-off (1s ±20%, from the failure) gets the stored
	// error and runs nothing.
	if time.Now().Before(st.RetryAt) {
		if _, err := s.Token(InBackground(context.Background()), srcTarget); err != err1 {
			t.Fatalf("background need within the back-off = %v, want the stored error", err)
		}
		if c := m.Calls(); c != 1 {
			t.Fatalf("a background need within the back-off ran the command (%d calls)", c)
		}
	} else {
		t.Logf("the machine was too slow to check a background need within the back-off")
	}
	// Then 20 needs at once: one fresh run serves them all.
	var wg sync.WaitGroup
	got := make([]string, 20)
	for i := range got {
		wg.Go(func() {
			tok, err := s.Token(context.Background(), srcTarget)
			if err != nil {
				got[i] = err.Error()
				return
			}
			got[i] = tok.Value
		})
	}
	wg.Wait()
	for i, v := range got {
		if v != "tok-ok-2" {
			t.Errorf("need %d after the recovery got %q, want tok-ok-2 (a fresh run, not the stored error)", i, v)
		}
	}
	if c := m.Calls(); c != 2 {
		t.Errorf("minter called %d times, want 2", c)
	}
	st = statusOf(t, s, "alice")
	if !st.Valid || st.ConsecutiveFailures != 0 || st.Failures != 1 || st.Mints != 1 || st.LastError != "" || !st.RetryAt.IsZero() {
		t.Errorf("Status after recovery = %+v", st)
	}
}

// cachingMinter prints JWTs of lifetime life and, like az, hands back its
// cached token until only keep is left.
type cachingMinter struct {
	life, keep time.Duration

	mu     sync.Mutex
	runs   int
	cached string
	exp    time.Time
}

func (c *cachingMinter) Mint(context.Context, Target) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.runs++
	now := time.Now()
	if c.cached == "" || c.exp.Sub(now) < c.keep {
		c.exp = now.Add(c.life)
		c.cached = jwtExpiringAt(c.exp, fmt.Sprint(c.runs))
	}
	return c.cached, nil
}

func (c *cachingMinter) Runs() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runs
}

// The az case at scaled-down times: the command caches its token until the
// refresh margin is left (and the margin equals its cache threshold).
// Asking for a token never fails, every token handed out still has the
// login safety left, and the runs stay bounded.
func TestSourceCachingCommand(t *testing.T) {
	t.Parallel()
	for _, margin := range []time.Duration{time.Second, 1500 * time.Millisecond} {
		t.Run(margin.String(), func(t *testing.T) {
			t.Parallel()
			const life, keep, safety = 3 * time.Second, time.Second, 200 * time.Millisecond
			m := &cachingMinter{life: life, keep: keep}
			cfg := reuseConfig()
			cfg.RefreshMargin = margin
			s := newTestSource(t, cfg, m)
			s.LoginSafety = safety
			const span = 10 * time.Second // more than three lifetimes
			var refused, short, asked atomic.Int64
			var wg sync.WaitGroup
			end := time.Now().Add(span)
			for range 4 {
				wg.Go(func() {
					for time.Now().Before(end) {
						ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
						tok, err := s.Token(ctx, srcTarget)
						cancel()
						asked.Add(1)
						if err != nil {
							refused.Add(1)
							t.Logf("Token: %v", err)
						} else if exp, _ := jwtExpiry(tok.Value); time.Until(exp) < safety-10*time.Millisecond {
							short.Add(1)
						}
						time.Sleep(10 * time.Millisecond)
					}
				})
			}
			wg.Wait()
			if refused.Load() != 0 || short.Load() != 0 {
				t.Errorf("of %d needs, %d were refused and %d got a token with less than the login safety left; want none",
					asked.Load(), refused.Load(), short.Load())
			}
			// A refresh per lifetime, plus at most ten rechecks while the
			// command still serves its cached token.
			lifetimes := int(span/(life-keep)) + 2
			if r := m.Runs(); r > lifetimes*11 || r < int(span/life) {
				t.Errorf("%d runs over %v, want between %d and %d", r, span, int(span/life), lifetimes*11)
			}
			st := statusOf(t, s, "alice")
			t.Logf("runs %d: %d new tokens, %d unchanged", m.Runs(), st.Mints, st.Unchanged)
			if margin > keep && st.Unchanged == 0 {
				t.Errorf("margin %v above the command's cache threshold %v, yet no run printed the cached token: %+v", margin, keep, st)
			}
		})
	}
}

// A token older than the current one is not adopted; nor is it a failure.
func TestSourceOlderTokenKept(t *testing.T) {
	t.Parallel()
	now := time.Now()
	newer, older := jwtExpiringAt(now.Add(10*time.Second), "newer"), jwtExpiringAt(now.Add(8*time.Second), "older")
	m := &fakeMinter{mint: func(_ context.Context, n int, _ Target) (string, error) {
		if n == 1 {
			return newer, nil
		}
		return older, nil
	}}
	cfg := reuseConfig()
	cfg.RefreshMargin = 9500 * time.Millisecond // refresh after 0.5s
	s := newTestSource(t, cfg, m)
	s.LoginSafety = time.Second
	if tok := mustToken(t, s, srcTarget); tok.Value != newer {
		t.Fatal("first token is not the newer JWT")
	}
	waitFor(t, 5*time.Second, "a recheck", func() bool { return statusOf(t, s, "alice").Unchanged >= 1 })
	if tok := mustToken(t, s, srcTarget); tok.Value != newer {
		t.Error("an older token replaced the current one")
	}
	st := statusOf(t, s, "alice")
	if st.Mints != 1 || st.Failures != 0 || st.NextRefresh.IsZero() {
		t.Errorf("Status = %+v; want 1 mint, no failure, a recheck scheduled", st)
	}
	if d := time.Until(st.NextRefresh); d < 600*time.Millisecond || d > 1300*time.Millisecond {
		t.Errorf("next recheck in %v, want an eighth of the 8.5s window ±20%%", d)
	}
}

// Keys nobody needs are dropped: at once after a failure once idleKeep
// passes, and the number kept is bounded.
func TestSourceDropsUnneededKeys(t *testing.T) {
	t.Parallel()
	m := &fakeMinter{mint: func(_ context.Context, _ int, tg Target) (string, error) {
		if strings.HasPrefix(tg.User, "random") {
			return "", &Error{Reason: "no such user"}
		}
		return "tok-" + tg.User, nil
	}}
	s := newTestSource(t, reuseConfig(), m)
	s.idleKeep = 300 * time.Millisecond
	for i := range 20 {
		if _, err := s.Token(context.Background(), Target{Host: "h", Port: 1, User: fmt.Sprint("random", i)}); err == nil {
			t.Fatal("a failing command succeeded")
		}
	}
	mustToken(t, s, srcTarget)
	if n := len(s.Status()); n != 21 {
		t.Fatalf("%d keys listed, want 21", n)
	}
	time.Sleep(800 * time.Millisecond)
	if sts := s.Status(); len(sts) != 1 || sts[0].User != "alice" {
		t.Errorf("after idleKeep the keys are %+v; want only alice's (a usable token)", sts)
	}
	if c := m.Calls(); c != 21 {
		t.Errorf("minter called %d times, want 21: no background retries for failed keys", c)
	}

	for i := range maxKeys + 100 {
		mustToken(t, s, Target{Host: "h", Port: 2, User: fmt.Sprint("u", i)})
	}
	if n := len(s.Status()); n > maxKeys {
		t.Errorf("%d keys kept, want at most %d", n, maxKeys)
	}
}

// Close kills the process group of a command still running and returns
// only once it is gone.
func TestSourceCloseKillsCommand(t *testing.T) {
	t.Parallel()
	pidFile := filepath.Join(t.TempDir(), "pid")
	cfg := reuseConfig()
	cfg.Cmd = "TOKENCMD_PID_FILE=" + pidFile + " " + script("hang.sh")
	s := NewSource(cfg, NewCommand(cfg))
	errc := make(chan error, 1)
	go func() {
		_, err := s.Token(context.Background(), srcTarget)
		errc <- err
	}()
	var pgid int
	waitFor(t, 5*time.Second, "the command to start", func() bool {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return false
		}
		pgid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	time.Sleep(100 * time.Millisecond) // its children start
	s.Close()
	if err := syscall.Kill(-pgid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("after Close, process group %d: kill 0 = %v, want ESRCH (no process left)", pgid, err)
	}
	if err := <-errc; err == nil {
		t.Error("Token returned no error after Close killed its command")
	}
}

func TestBackoffSchedule(t *testing.T) {
	t.Parallel()
	tests := []struct {
		consecutive int64
		base        time.Duration
	}{
		{1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {4, 8 * time.Second},
		{5, 16 * time.Second}, {6, 32 * time.Second}, {7, time.Minute}, {8, time.Minute}, {100, time.Minute}, {1 << 40, time.Minute},
	}
	for _, tt := range tests {
		lo, hi := tt.base*8/10, tt.base*12/10
		var seenLow, seenHigh bool
		for range 200 {
			d := backoff(tt.consecutive)
			if d < lo || d > hi {
				t.Fatalf("backoff(%d) = %v, want %v ±20%% [%v, %v]", tt.consecutive, d, tt.base, lo, hi)
			}
			seenLow = seenLow || d < tt.base
			seenHigh = seenHigh || d > tt.base
		}
		if !seenLow || !seenHigh {
			t.Errorf("backoff(%d): 200 draws were never both below and above %v: no jitter", tt.consecutive, tt.base)
		}
	}
}

// A token that is still usable keeps being served while background refreshes
// fail, and the failures are reported through OnFailure.
//
// Not parallel, so that a race report under -race is attributed to this test
// alone.
func TestSourceBackgroundFailureKeepsServing(t *testing.T) {
	var exp time.Time
	m := &fakeMinter{mint: func(_ context.Context, n int, _ Target) (string, error) {
		if n == 1 {
			return jwtExpiringAt(exp, "only"), nil
		}
		return "", aadstsError()
	}}
	cfg := reuseConfig()
	cfg.RefreshMargin = 1300 * time.Millisecond
	s := NewSource(cfg, m)
	s.LoginSafety = time.Second
	t.Cleanup(s.Close)
	type failure struct {
		t   Target
		err error
	}
	failures := make(chan failure, 10)
	s.OnFailure = func(tg Target, err error) {
		// A log sink can be slow; callers must not be affected meanwhile.
		time.Sleep(20 * time.Millisecond)
		failures <- failure{tg, err}
	}

	exp = time.Now().Add(2500 * time.Millisecond) // usable 1.5s, refresh at ~1.2s
	tok := mustToken(t, s, srcTarget)

	// Callers keep asking, as the pool would, while the refresh fails.
	stop := make(chan struct{})
	var hammer sync.WaitGroup
	var served, wrong atomic.Int64
	for range 4 {
		hammer.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := s.Token(context.Background(), srcTarget)
				if err == nil && got.Value == tok.Value {
					served.Add(1)
				} else if time.Now().Before(tok.UseUntil.Add(-100 * time.Millisecond)) {
					wrong.Add(1) // an error or other token while the first was still usable
				}
				time.Sleep(time.Millisecond)
			}
		})
	}

	var f failure
	select {
	case f = <-failures:
	case <-time.After(3 * time.Second):
		close(stop)
		hammer.Wait()
		t.Fatal("OnFailure was not called for the failed background refresh")
	}
	var tokErr *Error
	if f.t.User != "alice" || !errors.As(f.err, &tokErr) || !strings.Contains(f.err.Error(), "AADSTS700082") {
		t.Errorf("OnFailure(%+v, %v), want alice and the AADSTS *Error", f.t, f.err)
	}
	// Still inside the usable window: the cached token is served.
	called := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	got, err := s.Token(ctx, srcTarget)
	cancel()
	if called.Before(tok.UseUntil) && (err != nil || got.Value != tok.Value) {
		t.Errorf("Token after a failed background refresh = %v; want the still-usable cached token", err)
	}
	st := statusOf(t, s, "alice")
	close(stop)
	hammer.Wait()
	if st.Mints != 1 || st.Failures < 1 || st.ConsecutiveFailures < 1 || !strings.Contains(st.LastError, "AADSTS700082") || st.RetryAt.IsZero() {
		t.Errorf("Status after a failed background refresh = %+v", st)
	}
	if wrong.Load() != 0 || served.Load() == 0 {
		t.Errorf("concurrent callers: %d served the cached token, %d got something else while it was usable", served.Load(), wrong.Load())
	}
}

// A token that is already expired, or inside the login safety, when minted
// is an error that says why. (Inside the refresh margin is fine.)
func TestSourceExpiredAtMint(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		exp  time.Duration // from now
		want string
	}{
		{"exp in the past", -time.Hour, "is this host's clock right?"},
		{"exp within the login safety", 30 * time.Second, "too soon to log in with it (a token is not used in the last 40s before its expiry)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			value := jwtExpiringAt(time.Now().Add(tt.exp), tt.name)
			m := &fakeMinter{mint: func(context.Context, int, Target) (string, error) { return value, nil }}
			cfg := reuseConfig()
			cfg.RefreshMargin = time.Minute
			s := newTestSource(t, cfg, m)
			_, err := s.Token(context.Background(), srcTarget)
			var tokErr *Error
			if !errors.As(err, &tokErr) {
				t.Fatalf("Token = %v (%T), want *Error", err, err)
			}
			if !strings.HasPrefix(err.Error(), "backend token command failed: ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), value) {
				t.Errorf("error contains the token: %q", err)
			}
			if st := statusOf(t, s, "alice"); st.Valid || st.Mints != 0 || st.ConsecutiveFailures != 1 {
				t.Errorf("Status = %+v, want a failure and no valid token", st)
			}
		})
	}
}

func TestSourceEvict(t *testing.T) {
	t.Parallel()
	m := &fakeMinter{}
	s := newTestSource(t, reuseConfig(), m)
	first := mustToken(t, s, srcTarget)
	bob := mustToken(t, s, bobTarget)

	s.Evict(srcTarget, "some-other-value")
	s.Evict(Target{Host: srcTarget.Host, Port: 1, User: "alice"}, first.Value) // another key
	if tok := mustToken(t, s, srcTarget); tok.Value != first.Value || m.Calls() != 2 {
		t.Fatalf("after evicting values that are not cached: Token = %q, %d calls; want %q and 2", tok.Value, m.Calls(), first.Value)
	}

	s.Evict(srcTarget, first.Value)
	second := mustToken(t, s, srcTarget)
	if second.Value == first.Value || m.Calls() != 3 {
		t.Fatalf("after evicting the cached token: Token = %q, %d calls; want a fresh mint", second.Value, m.Calls())
	}
	// A stale value (the one the server refused before) evicts nothing now.
	s.Evict(srcTarget, first.Value)
	if tok := mustToken(t, s, srcTarget); tok.Value != second.Value || m.Calls() != 3 {
		t.Errorf("after evicting a stale value: Token = %q, %d calls; want %q and 3", tok.Value, m.Calls(), second.Value)
	}
	// Other users are untouched.
	if tok := mustToken(t, s, bobTarget); tok.Value != bob.Value || m.Calls() != 3 {
		t.Errorf("bob's token changed after evicting alice's: %q, %d calls", tok.Value, m.Calls())
	}
}

// Evicting while a mint is in flight: later callers join it instead of
// starting another.
func TestSourceEvictDuringRefreshJoinsIt(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	started := make(chan int, 10)
	m := &fakeMinter{started: started, mint: func(_ context.Context, n int, _ Target) (string, error) {
		if n == 2 {
			<-release
		}
		return fmt.Sprintf("tok-%d", n), nil
	}}
	s := newTestSource(t, reuseConfig(), m)
	first := mustToken(t, s, srcTarget)
	<-started
	s.Evict(srcTarget, first.Value)
	done := make(chan string, 5)
	for range 5 {
		go func() {
			tok, err := s.Token(context.Background(), srcTarget)
			if err != nil {
				done <- err.Error()
				return
			}
			done <- tok.Value
		}()
	}
	<-started
	close(release)
	for range 5 {
		if v := <-done; v != "tok-2" {
			t.Errorf("waiter got %q, want tok-2", v)
		}
	}
	if c := m.Calls(); c != 2 {
		t.Errorf("minter called %d times, want 2", c)
	}
}

func TestSourceCallerCancel(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	m := &fakeMinter{mint: func(context.Context, int, Target) (string, error) {
		<-release
		return "tok-late", nil
	}}
	s := newTestSource(t, reuseConfig(), m)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := s.Token(ctx, srcTarget)
	var tokErr *Error
	if !errors.As(err, &tokErr) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "canceled") {
		t.Fatalf("Token with an expiring context = %v, want *Error canceled wrapping DeadlineExceeded", err)
	}
	// The mint goes on for others: the next caller gets its result.
	close(release)
	if tok := mustToken(t, s, srcTarget); tok.Value != "tok-late" || m.Calls() != 1 {
		t.Errorf("after a caller gave up: Token = %q, %d calls; want tok-late, 1", tok.Value, m.Calls())
	}
}

func TestSourceClose(t *testing.T) {
	t.Parallel()
	m := &fakeMinter{mint: func(ctx context.Context, _ int, _ Target) (string, error) {
		<-ctx.Done() // like Command: Close kills the running command
		return "", &Error{Reason: "canceled: " + ctx.Err().Error(), Err: ctx.Err()}
	}}
	s := NewSource(reuseConfig(), m)
	errc := make(chan error, 1)
	go func() {
		_, err := s.Token(context.Background(), srcTarget)
		errc <- err
	}()
	waitFor(t, 2*time.Second, "the mint to start", func() bool { return m.Calls() == 1 })
	s.Close()
	select {
	case err := <-errc:
		var tokErr *Error
		if !errors.As(err, &tokErr) {
			t.Errorf("waiting Token after Close = %v, want *Error", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not end the running mint")
	}
	_, err := s.Token(context.Background(), srcTarget)
	if err == nil || !strings.Contains(err.Error(), "shutting down") {
		t.Errorf("Token after Close = %v, want the shutting-down error", err)
	}
}

// Status is served to the admin API: it must never carry a token.
func TestSourceStatusNeverContainsToken(t *testing.T) {
	t.Parallel()
	values := []string{
		jwtExpiringAt(time.Now().Add(time.Hour), "status-ok"),
		"opaque-secret-token-for-bob",
		jwtExpiringAt(time.Now().Add(-time.Hour), "status-expired"), // refused at mint
	}
	m := &fakeMinter{mint: func(_ context.Context, n int, tg Target) (string, error) {
		switch tg.User {
		case "alice":
			return values[0], nil
		case "bob":
			return values[1], nil
		case "carol":
			return values[2], nil
		}
		return "", aadstsError()
	}}
	s := newTestSource(t, reuseConfig(), m)
	mustToken(t, s, srcTarget)
	mustToken(t, s, bobTarget)
	if _, err := s.Token(context.Background(), Target{Host: "h", Port: 1, User: "carol"}); err == nil {
		t.Fatal("an expired token was accepted")
	}
	if _, err := s.Token(context.Background(), Target{Host: "h", Port: 1, User: "dave"}); err == nil {
		t.Fatal("a failing mint succeeded")
	}
	sts := s.Status()
	if len(sts) != 4 {
		t.Fatalf("Status has %d entries, want 4: %+v", len(sts), sts)
	}
	out, err := json.Marshal(sts)
	if err != nil {
		t.Fatal(err)
	}
	text := string(out) + fmt.Sprintf("%+v %#v", sts, sts)
	for _, v := range values {
		// The whole token, and its signature-bearing parts.
		for _, part := range append([]string{v}, strings.Split(v, ".")[1:]...) {
			if len(part) > 8 && strings.Contains(text, part) {
				t.Errorf("Status contains (part of) a token %q:\n%s", part, out)
			}
		}
	}
	var decoded []map[string]any
	if err := json.Unmarshal(out, &decoded); err != nil {
		t.Fatal(err)
	}
	if decoded[0]["user"] != "alice" || decoded[0]["valid"] != true || decoded[3]["last_error"] == nil {
		t.Errorf("Status JSON = %s; want alice valid first, dave with last_error", out)
	}
}
