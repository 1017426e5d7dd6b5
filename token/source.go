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
	// Expiry is the JWT's exp claim, or the mint time plus Config.Lifetime
	// for opaque tokens.
	Expiry time.Time
	// UseUntil is Expiry less Config.RefreshMargin: no new backend
	// connection authenticates with the token after it, and connections
	// that did are retired by then.
	UseUntil time.Time
}

// Minter runs the token command; *Command satisfies it.
type Minter interface {
	Mint(ctx context.Context, t Target) (string, error)
}

// Back-off after failed mints: doubling from backoffBase up to backoffMax,
// with ±20% jitter so several gateways do not retry in step.
const (
	backoffBase = time.Second
	backoffMax  = time.Minute
)

// Source hands out tokens for backend connections. With Config.Reuse it
// keeps one token per (host, port, user) until its UseUntil, refreshes it in
// the background ahead of that (so no dial waits on the command while a
// valid token exists), runs the command once for any number of simultaneous
// needs, and backs off after failures. Safe for concurrent use.
type Source struct {
	cfg    Config
	minter Minter
	// OnFailure, if set before use, is told about failed mints that nobody
	// waited for (background refreshes), so they can be logged.
	OnFailure func(Target, error)

	ctx    context.Context // cancelled by Close: ends running commands
	cancel context.CancelFunc

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
	call   *call // the mint in flight, if any

	mints, failures, consecutive int64
	lastMint                     time.Time
	lastDuration                 time.Duration
	lastErr                      error
	retryAt                      time.Time
	lastUsed                     time.Time
	nextRefresh                  time.Time
	timer                        *time.Timer
}

type call struct {
	done chan struct{}
	tok  Token
	err  error
}

// NewSource returns a Source minting with m under cfg.
func NewSource(cfg Config, m Minter) *Source {
	s := &Source{cfg: cfg, minter: m, entries: map[key]*entry{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// Token returns a token for t: the cached one while it is usable, else a
// fresh one. Failures are *Error.
func (s *Source) Token(ctx context.Context, t Target) (Token, error) {
	k := key{t.Host, t.Port, t.User}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return Token{}, &Error{Reason: "the gateway is shutting down"}
	}
	e := s.entries[k]
	if e == nil {
		e = &entry{}
		s.entries[k] = e
	}
	e.target = t
	now := time.Now()
	e.lastUsed = now
	if s.cfg.Reuse && e.tok.Value != "" && now.Before(e.tok.UseUntil) {
		tok := e.tok
		s.mu.Unlock()
		return tok, nil
	}
	c := e.call
	if c == nil || !s.cfg.Reuse {
		if now.Before(e.retryAt) {
			// Backing off: the identity provider is not asked again yet.
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
		return Token{}, &Error{Reason: "canceled: " + ctx.Err().Error(), Err: ctx.Err()}
	}
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

// Close stops background refreshes and kills running commands.
func (s *Source) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, e := range s.entries {
		if e.timer != nil {
			e.timer.Stop()
		}
	}
	s.cancel()
}

// startLocked runs the command for e in its own goroutine. The command is
// not tied to any one caller's context: others may be waiting on it too.
func (s *Source) startLocked(k key, e *entry, background bool) *call {
	c := &call{done: make(chan struct{})}
	if s.cfg.Reuse {
		e.call = c
	}
	t := e.target
	go func() {
		start := time.Now()
		value, err := s.minter.Mint(s.ctx, t)
		var tok Token
		if err == nil {
			tok, err = s.newToken(value, start)
		}
		s.finish(k, e, c, tok, err, start, background)
	}()
	return c
}

func (s *Source) newToken(value string, minted time.Time) (Token, error) {
	tok := Token{Value: value}
	if exp, ok := jwtExpiry(value); ok {
		tok.Expiry = exp
	} else {
		tok.Expiry = minted.Add(s.cfg.Lifetime)
	}
	tok.UseUntil = tok.Expiry.Add(-s.cfg.RefreshMargin)
	if !time.Now().Before(tok.Expiry) {
		return Token{}, &Error{Reason: fmt.Sprintf(
			"the command printed a token that expired at %s, before it could be used (is this host's clock right?)",
			tok.Expiry.UTC().Format(time.RFC3339))}
	}
	if !time.Now().Before(tok.UseUntil) {
		return Token{}, &Error{Reason: fmt.Sprintf(
			"the command printed a token that expires at %s, within GATEKEEPER_BACKEND_TOKEN_REFRESH_MARGIN (%s); lower the margin or check this host's clock",
			tok.Expiry.UTC().Format(time.RFC3339), s.cfg.RefreshMargin)}
	}
	return tok, nil
}

func (s *Source) finish(k key, e *entry, c *call, tok Token, err error, start time.Time, background bool) {
	c.tok, c.err = tok, err
	now := time.Now()
	s.mu.Lock()
	target := e.target
	if e.call == c {
		e.call = nil
	}
	e.lastMint, e.lastDuration = start, now.Sub(start)
	if err != nil {
		e.failures++
		e.consecutive++
		e.lastErr = err
		e.retryAt = now.Add(backoff(e.consecutive))
		// A token that is still usable keeps serving; try again after the
		// back-off, while someone still needs tokens for this key.
		s.scheduleLocked(k, e, e.retryAt)
	} else {
		e.mints++
		e.consecutive = 0
		e.retryAt = time.Time{}
		if s.cfg.Reuse {
			e.tok = tok
			// Refresh when 80% of the usable window has passed.
			s.scheduleLocked(k, e, start.Add(tok.UseUntil.Sub(start)*4/5))
		}
	}
	s.mu.Unlock()
	close(c.done)
	if err != nil && background && s.OnFailure != nil {
		s.OnFailure(target, err)
	}
}

func (s *Source) scheduleLocked(k key, e *entry, at time.Time) {
	if !s.cfg.Reuse || s.closed {
		return
	}
	if e.timer != nil {
		e.timer.Stop()
	}
	e.nextRefresh = at
	e.timer = time.AfterFunc(time.Until(at), func() { s.refresh(k) })
}

// refresh mints ahead of need for a key that was used within the last
// token lifetime; keys nobody uses any more are left to lapse.
func (s *Source) refresh(k key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[k]
	if s.closed || e == nil || e.call != nil {
		return
	}
	e.nextRefresh = time.Time{}
	lifetime := s.cfg.Lifetime
	if e.tok.Value != "" {
		lifetime = e.tok.Expiry.Sub(e.lastMint)
	}
	if time.Since(e.lastUsed) > lifetime {
		return
	}
	s.startLocked(k, e, true)
}

func backoff(consecutive int64) time.Duration {
	d := backoffMax
	if consecutive < 7 {
		d = min(backoffBase<<(consecutive-1), backoffMax)
	}
	return time.Duration(float64(d) * (0.8 + 0.4*mathrand.Float64()))
}

// Status describes the token of one (host, port, user); never its value.
type Status struct {
	Host                string        `json:"host"`
	Port                int           `json:"port"`
	User                string        `json:"user"`
	Valid               bool          `json:"valid"`
	Expiry              time.Time     `json:"expiry,omitzero"`
	UseUntil            time.Time     `json:"use_until,omitzero"`
	LastMint            time.Time     `json:"last_mint,omitzero"`
	LastMintDuration    time.Duration `json:"last_mint_duration_ns"`
	Mints               int64         `json:"mints"`
	Failures            int64         `json:"failures"`
	ConsecutiveFailures int64         `json:"consecutive_failures"`
	LastError           string        `json:"last_error,omitempty"`
	NextRefresh         time.Time     `json:"next_refresh,omitzero"`
	RetryAt             time.Time     `json:"retry_at,omitzero"`
}

// Status returns the state of every token the source has minted or tried to.
func (s *Source) Status() []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	out := make([]Status, 0, len(s.entries))
	for k, e := range s.entries {
		st := Status{
			Host: k.host, Port: k.port, User: k.user,
			Valid:  e.tok.Value != "" && now.Before(e.tok.UseUntil),
			Expiry: e.tok.Expiry, UseUntil: e.tok.UseUntil,
			LastMint: e.lastMint, LastMintDuration: e.lastDuration,
			Mints: e.mints, Failures: e.failures, ConsecutiveFailures: e.consecutive,
			NextRefresh: e.nextRefresh, RetryAt: e.retryAt,
		}
		if e.lastErr != nil && e.consecutive > 0 {
			st.LastError = e.lastErr.Error()
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].User < out[j].User })
	return out
}
