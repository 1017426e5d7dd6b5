package token

import (
	"context"
	"fmt"
	mathrand "math/rand/v2"
	"sort"
	"sync"
	"time"
)

// Token is a minted credential and the times that govern its use.
type Token struct {
	Value string
	// Expiry is the JWT's exp claim, or, for opaque tokens, the time the
	// command printed it plus Config.Lifetime. (An opaque value printed
	// again counts as new: a command may print a password that never
	// changes, and nothing tells an opaque token's age.)
	Expiry time.Time
	// UseUntil is Expiry less the login safety (Source.LoginSafety): no
	// new backend connection authenticates with the token after it, and
	// pooled connections that did are retired by then.
	UseUntil time.Time

	// seen is when the command printed this value; refreshAt is when
	// asking for the next token starts (Expiry less Config.RefreshMargin).
	seen, refreshAt time.Time
}

// Minter runs the token command; *Command satisfies it.
type Minter interface {
	Mint(ctx context.Context, t Target) (string, error)
}

const (
	// Back-off of background retries after failed runs while the current
	// token is still usable: doubling from backoffBase up to backoffMax,
	// with ±20% jitter so several gateways do not retry in step.
	backoffBase = time.Second
	backoffMax  = time.Minute

	// demandFloor is the shortest time between two runs for one key that a
	// need (a backend dial) starts after a failure: a client arriving after
	// the command recovered gets a fresh answer, not the stored error, and
	// a failing identity provider is asked at most once per floor per key.
	demandFloor = 2 * time.Second

	// Asking again after the command printed the current (or an older)
	// token: every eighth of the window between the refresh point and the
	// end of use, within these bounds, ±20%. So a command that caches (az
	// until 5 minutes are left) costs at most about ten runs per token.
	recheckMin = time.Second
	recheckMax = time.Minute

	// idleKeep is how long a key with no usable token (its command failed,
	// or its token lapsed unused) stays listed after its last need.
	idleKeep = time.Minute

	// maxKeys bounds the keys kept: past it the least recently needed key
	// is dropped. In token mode without GATEKEEPER_CLIENT_AUTH_FILE a
	// client picks the user name, hence the key.
	maxKeys = 1024

	// ClockSkew is the part of the login safety that covers a difference
	// between this host's clock and the identity provider's or server's.
	ClockSkew = 30 * time.Second

	// closeWait bounds how long Close waits for running commands to be
	// killed and reaped.
	closeWait = 5 * time.Second
)

// Source hands out tokens for backend connections. Each token has two
// clocks: from Expiry-RefreshMargin (refreshAt) the source asks the command
// for a newer one in the background, and until Expiry-LoginSafety
// (UseUntil) the current one keeps serving new backend logins. A command
// that answers with the current token again (az and gcloud cache theirs) or
// an older one is asked again later; that is not a failure while the
// current token is usable.
//
// With Config.Reuse it keeps one token per (host, port, user), runs the
// command once for any number of simultaneous needs, refreshes only keys in
// use, and backs off after background failures; a need after a failure
// runs the command again (at most once per demandFloor). Safe for
// concurrent use.
type Source struct {
	cfg      Config
	minter   Minter
	provider string // a built-in provider's name; "" for the command
	// OnFailure, if set before use, is told about failed mints that nobody
	// waited for (background refreshes), so they can be logged.
	OnFailure func(Target, error)
	// LoginSafety, if changed, is changed before use: a token is not used
	// for a new backend login after Expiry-LoginSafety. It covers the login
	// itself (the backend connect timeout) and clock skew. NewSource sets
	// 10s (the default connect timeout) + ClockSkew.
	LoginSafety time.Duration

	// demandFloor and idleKeep are the constants of the same names; tests
	// shorten them.
	demandFloor, idleKeep time.Duration

	ctx     context.Context // cancelled by Close: ends running commands
	cancel  context.CancelFunc
	running sync.WaitGroup // runs of the command

	mu      sync.Mutex
	entries map[key]*entry
	closed  bool
}

type key struct {
	host string
	port int
	user string
}

type entry struct {
	target Target
	tok    Token
	call   *call // the run in flight, if any

	mints, unchanged, failures, consecutive int64
	lastMint                                time.Time
	lastDuration                            time.Duration
	lastEnd                                 time.Time
	lastErr                                 error
	retryAt                                 time.Time // after a failure: when a background run or need may run the command again
	lastUsed                                time.Time
	nextRefresh                             time.Time // next background run, if any
	timer                                   *time.Timer
}

type call struct {
	done chan struct{}
	tok  Token
	err  error
}

// NewSource returns a Source minting with m under cfg.
func NewSource(cfg Config, m Minter) *Source {
	s := &Source{cfg: cfg, minter: m, entries: map[key]*entry{},
		LoginSafety: 10*time.Second + ClockSkew, demandFloor: demandFloor, idleKeep: idleKeep}
	if n, ok := m.(Named); ok && builtin(n.ProviderName()) {
		s.provider = n.ProviderName()
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

func (t Token) usable(now time.Time) bool { return t.Value != "" && now.Before(t.UseUntil) }

// Token returns a token for t: the cached one while it is usable, else a
// fresh one. Failures are *Error.
func (s *Source) Token(ctx context.Context, t Target) (Token, error) {
	k := key{t.Host, t.Port, t.User}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return Token{}, s.error("the gateway is shutting down", nil)
	}
	now := time.Now()
	e := s.entries[k]
	if e == nil {
		s.makeRoomLocked()
		e = &entry{}
		s.entries[k] = e
	}
	e.target = t
	e.lastUsed = now
	if s.cfg.Reuse && e.tok.usable(now) {
		tok := e.tok
		// A key that lapsed (nobody needed it for a token's lifetime) has
		// no refresh scheduled; being needed again past refreshAt starts one.
		if e.call == nil && e.nextRefresh.IsZero() && !now.Before(tok.refreshAt) {
			s.startLocked(k, e, true)
		}
		s.mu.Unlock()
		return tok, nil
	}
	c := e.call
	if c == nil || !s.cfg.Reuse {
		if e.consecutive > 0 && (now.Sub(e.lastEnd) < s.demandFloor || (isBackground(ctx) && now.Before(e.retryAt))) {
			// The command failed a moment ago: not asked again so soon.
			// A need nobody waits on (a pool keeping connections ready)
			// waits for the whole back-off: only clients get fresh runs.
			err := e.lastErr
			s.mu.Unlock()
			return Token{}, err
		}
		c = s.startLocked(k, e, false)
	}
	s.mu.Unlock()
	select {
	case <-c.done:
		return c.tok, c.err
	case <-ctx.Done():
		return Token{}, s.error("canceled: "+ctx.Err().Error(), ctx.Err())
	}
}

type backgroundKey struct{}

// InBackground marks ctx as a need for a token that no client waits on,
// such as a pool opening idle connections ahead of demand. After a failure
// such a need gets the stored error until the back-off (1s doubling to a
// minute) has passed, where a client's need runs the command again after
// the short demand floor: a pool that keeps trying must not run a failing
// command every couple of seconds.
func InBackground(ctx context.Context) context.Context {
	return context.WithValue(ctx, backgroundKey{}, true)
}

func isBackground(ctx context.Context) bool {
	b, _ := ctx.Value(backgroundKey{}).(bool)
	return b
}

// makeRoomLocked drops the least recently needed key with no run in flight
// when the source holds maxKeys.
func (s *Source) makeRoomLocked() {
	if len(s.entries) < maxKeys {
		return
	}
	var oldest key
	var found *entry
	for k, e := range s.entries {
		if e.call == nil && (found == nil || e.lastUsed.Before(found.lastUsed)) {
			oldest, found = k, e
		}
	}
	if found != nil {
		s.dropLocked(oldest, found)
	}
}

func (s *Source) dropLocked(k key, e *entry) {
	if e.timer != nil {
		e.timer.Stop()
	}
	delete(s.entries, k)
}

// Evict drops value if it is still the cached token for t: the server
// refused it (revoked or rotated before its exp), so the next need mints.
func (s *Source) Evict(t Target, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.entries[key{t.Host, t.Port, t.User}]; e != nil && e.tok.Value == value {
		e.tok = Token{}
	}
}

// Close stops background refreshes, kills the process groups of running
// commands and waits (a few seconds at most) until they are reaped, so no
// command outlives the gateway.
func (s *Source) Close() {
	s.mu.Lock()
	s.closed = true
	for _, e := range s.entries {
		if e.timer != nil {
			e.timer.Stop()
		}
	}
	s.mu.Unlock()
	s.cancel()
	done := make(chan struct{})
	go func() {
		s.running.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(closeWait):
	}
}

// startLocked runs the command for e in its own goroutine. The command is
// not tied to any one caller's context: others may be waiting on it too.
func (s *Source) startLocked(k key, e *entry, background bool) *call {
	c := &call{done: make(chan struct{})}
	if s.cfg.Reuse {
		e.call = c
	}
	t := e.target
	s.running.Add(1)
	go func() {
		defer s.running.Done()
		start := time.Now()
		value, expiry, err := mintOnce(s.ctx, s.minter, t)
		if err != nil && s.provider != "" {
			err = providerError(s.provider, err)
		}
		s.finish(k, e, c, value, expiry, err, start, background)
	}()
	return c
}

// newToken builds the Token for a value the command printed at minted.
// A provider's own expiry comes first, then the JWT's exp, then the lifetime.
func (s *Source) newToken(value string, minted, expiry time.Time) Token {
	tok := Token{Value: value, seen: minted, Expiry: expiry}
	if tok.Expiry.IsZero() {
		if exp, ok := jwtExpiry(value); ok {
			tok.Expiry = exp
		} else {
			tok.Expiry = minted.Add(s.cfg.Lifetime)
		}
	}
	tok.UseUntil = tok.Expiry.Add(-s.LoginSafety)
	tok.refreshAt = tok.Expiry.Add(-s.cfg.RefreshMargin)
	if !tok.refreshAt.Before(tok.UseUntil) {
		// A margin no larger than the safety: refresh after 80% of the
		// usable window instead of when it is already over.
		tok.refreshAt = minted.Add(tok.UseUntil.Sub(minted) * 4 / 5)
	}
	return tok
}

// unusable explains why a token the command printed cannot serve a login.
func (s *Source) unusable(tok Token, now time.Time) error {
	if !now.Before(tok.Expiry) {
		return s.error(fmt.Sprintf(
			"%s a token that expired at %s, before it could be used (is this host's clock right?)",
			s.printed(), tok.Expiry.UTC().Format(time.RFC3339)), nil)
	}
	return s.error(fmt.Sprintf(
		"%s a token that expires at %s, too soon to log in with it (a token is not used in the last %s before its expiry); check this host's clock, or the %s own cache",
		s.printed(), tok.Expiry.UTC().Format(time.RFC3339), s.LoginSafety, s.whose()), nil)
}

func (s *Source) finish(k key, e *entry, c *call, value string, expiry time.Time, err error, start time.Time, background bool) {
	now := time.Now()
	s.mu.Lock()
	target := e.target
	if e.call == c {
		e.call = nil
	}
	e.lastMint, e.lastDuration, e.lastEnd = start, now.Sub(start), now
	cur := e.tok
	var tok Token
	if err == nil {
		tok = s.newToken(value, start, expiry)
	}
	kept := false
	if err == nil && s.cfg.Reuse && cur.usable(now) && !tok.Expiry.After(cur.Expiry) {
		// The command printed the current JWT again (it caches it) or an
		// older one: not a failure while the current one serves. Ask again
		// later.
		tok, kept = cur, true
	}
	if err == nil && !kept && !tok.usable(now) {
		err = s.unusable(tok, now)
	}
	c.tok, c.err = tok, err
	switch {
	case err != nil:
		e.failures++
		e.consecutive++
		e.lastErr = err
		e.retryAt = now.Add(backoff(e.consecutive))
		if s.cfg.Reuse && cur.usable(now) {
			// The current token still serves: retry in the background
			// after the back-off, while the key is in use.
			s.scheduleLocked(k, e, e.retryAt, true)
		} else {
			// Nothing to keep alive: the next need runs the command; the
			// key is dropped if nobody needs it for idleKeep.
			s.scheduleLocked(k, e, now.Add(s.idleKeep), false)
		}
	case kept:
		e.unchanged++
		e.consecutive = 0
		e.retryAt = time.Time{}
		s.scheduleLocked(k, e, now.Add(s.recheck(cur)), true)
	default:
		e.mints++
		e.consecutive = 0
		e.retryAt = time.Time{}
		if s.cfg.Reuse {
			e.tok = tok
			at := tok.refreshAt
			if !at.After(now) {
				// Printed with less than the margin left (a cached token):
				// usable, but ask for a newer one soon.
				at = now.Add(s.recheck(tok))
			}
			s.scheduleLocked(k, e, at, true)
		} else {
			s.scheduleLocked(k, e, now.Add(s.idleKeep), false)
		}
	}
	s.mu.Unlock()
	close(c.done)
	if err != nil && background && s.OnFailure != nil {
		s.OnFailure(target, err)
	}
}

// recheck is how long to wait before asking again when the command printed
// tok's value (or an older token) while tok is usable.
func (s *Source) recheck(tok Token) time.Duration {
	d := min(max(tok.UseUntil.Sub(tok.refreshAt)/8, recheckMin), recheckMax)
	return jitter(d)
}

// scheduleLocked arms e's timer for at. refresh says whether a background
// run is due then (shown as NextRefresh) or only a check whether the key is
// still needed.
func (s *Source) scheduleLocked(k key, e *entry, at time.Time, refresh bool) {
	if s.closed {
		return
	}
	if e.timer != nil {
		e.timer.Stop()
	}
	e.nextRefresh = time.Time{}
	if refresh {
		e.nextRefresh = at
	}
	e.timer = time.AfterFunc(time.Until(at), func() { s.tick(k, e) })
}

// tick runs when e's timer fires: a background run for a key in use with
// a usable token, or dropping a key nobody needs.
func (s *Source) tick(k key, e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.entries[k] != e || e.call != nil {
		return
	}
	e.timer, e.nextRefresh = nil, time.Time{}
	now := time.Now()
	if !s.cfg.Reuse || !e.tok.usable(now) {
		// Nothing to refresh: a need runs the command itself.
		if now.Sub(e.lastUsed) >= s.idleKeep {
			s.dropLocked(k, e)
		} else {
			s.scheduleLocked(k, e, e.lastUsed.Add(s.idleKeep), false)
		}
		return
	}
	// In use: needed within the token's lifetime (a pool dials at least
	// that often, since it retires connections by the token's horizon).
	if lifetime := e.tok.Expiry.Sub(e.tok.seen); now.Sub(e.lastUsed) > lifetime {
		// Let it lapse: checked again when it stops being usable; a need
		// before then starts a refresh (see Token).
		s.scheduleLocked(k, e, e.tok.UseUntil, false)
		return
	}
	s.startLocked(k, e, true)
}

func backoff(consecutive int64) time.Duration {
	d := backoffMax
	if consecutive < 7 {
		d = min(backoffBase<<(consecutive-1), backoffMax)
	}
	return jitter(d)
}

// jitter spreads d by ±20%, so several gateways do not run in step.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*mathrand.Float64()))
}

// Status describes the token of one (host, port, user); never its value.
type Status struct {
	Host     string    `json:"host"`
	Port     int       `json:"port"`
	User     string    `json:"user"`
	Valid    bool      `json:"valid"`
	Expiry   time.Time `json:"expiry,omitzero"`
	UseUntil time.Time `json:"use_until,omitzero"`
	// RefreshFrom is when asking for the next token starts.
	RefreshFrom      time.Time     `json:"refresh_from,omitzero"`
	LastMint         time.Time     `json:"last_mint,omitzero"`
	LastMintDuration time.Duration `json:"last_mint_duration_ns"`
	Mints            int64         `json:"mints"`
	// Unchanged counts runs that printed the current token again (or an
	// older one) while it was usable: the command's own cache.
	Unchanged           int64     `json:"unchanged"`
	Failures            int64     `json:"failures"`
	ConsecutiveFailures int64     `json:"consecutive_failures"`
	LastError           string    `json:"last_error,omitempty"`
	NextRefresh         time.Time `json:"next_refresh,omitzero"`
	RetryAt             time.Time `json:"retry_at,omitzero"`
}

// Status returns the state of every key the source keeps.
func (s *Source) Status() []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	out := make([]Status, 0, len(s.entries))
	for k, e := range s.entries {
		st := Status{
			Host: k.host, Port: k.port, User: k.user,
			Valid:  e.tok.usable(now),
			Expiry: e.tok.Expiry, UseUntil: e.tok.UseUntil, RefreshFrom: e.tok.refreshAt,
			LastMint: e.lastMint, LastMintDuration: e.lastDuration,
			Mints: e.mints, Unchanged: e.unchanged, Failures: e.failures, ConsecutiveFailures: e.consecutive,
			NextRefresh: e.nextRefresh, RetryAt: e.retryAt,
		}
		if e.lastErr != nil && e.consecutive > 0 {
			st.LastError = e.lastErr.Error()
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].User != out[j].User {
			return out[i].User < out[j].User
		}
		return out[i].Port < out[j].Port
	})
	return out
}
