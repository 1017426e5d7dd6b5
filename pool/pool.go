package pool

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	mathrand "math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/querycop/querycop/internal/reasons"

	"github.com/jackc/puddle/v2"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/backend"
)

// Dialer opens authenticated backend connections; *backend.Dialer
// satisfies it.
type Dialer interface {
	Dial(ctx context.Context, p backend.Params) (*backend.Conn, error)
}

// Key names one pool. In pass-through mode it includes a keyed hash of the
// client's credential (its password, or the SCRAM keys recovered from its
// proof), so a session is only ever handed a connection that was
// authenticated with its own credential; the credential is not part of it.
type Key struct {
	Database   string
	User       string
	credential [sha256.Size]byte
}

// Pools is the set of pools, one per Key, and the janitor that keeps them.
type Pools struct {
	cfg       Config
	dialer    Dialer
	tokenMode bool
	log       zerolog.Logger
	salt      [32]byte
	tick      time.Duration

	mu      sync.Mutex
	pools   map[Key]*Pool
	pending map[Key]*Pool // new keys whose credential is being checked
	closed  bool
	size    int // for pools created from now on (the admin API may change it)
	paused  bool

	stop chan struct{}
	done chan struct{}
}

// New starts the pools' janitor; Close stops it. In token mode the client
// credential plays no part in the key.
func New(cfg Config, dialer Dialer, tokenMode bool, log zerolog.Logger) *Pools {
	ps := &Pools{
		cfg: cfg, dialer: dialer, tokenMode: tokenMode, log: log,
		pools: map[Key]*Pool{}, pending: map[Key]*Pool{}, stop: make(chan struct{}), done: make(chan struct{}),
		size: cfg.Size,
	}
	_, _ = rand.Read(ps.salt[:])
	// Often enough that retirement happens ahead of retireAt (see maintain),
	// rarely enough to cost nothing.
	ps.tick = min(max(min(cfg.MaxConnLifetime/8, cfg.MaxConnIdleTime/4), 50*time.Millisecond), time.Second)
	go ps.janitor()
	return ps
}

// Admit finds the pool for a client's database, user and credential. In
// pass-through mode a credential not verified within AuthCacheTTL is
// checked by a real backend authentication first (that connection joins
// the pool), and the server's refusal is returned unchanged. The caller
// must call Leave when the client is gone.
//
// A pool for a new key joins the set (the admin views, the metrics, the
// janitor) only once the server accepted the credential: until then it is
// pending, shared by the clients of that key that arrive meanwhile, and
// dropped when the last of them is refused. Pools and pending pools
// together are capped at MaxPools.
func (ps *Pools) Admit(ctx context.Context, p backend.Params) (*Pool, error) {
	key := Key{Database: p.Database, User: p.User}
	if !ps.tokenMode {
		mac := hmac.New(sha256.New, ps.salt[:])
		if p.SCRAM != nil {
			// A distinct prefix: keys and a password never share a pool.
			mac.Write([]byte("scram\x00"))
			mac.Write(p.SCRAM.ClientKey)
			mac.Write(p.SCRAM.Salt)
			mac.Write([]byte(strconv.Itoa(p.SCRAM.Iterations)))
		} else {
			mac.Write([]byte("password\x00"))
			mac.Write([]byte(p.Password))
		}
		mac.Sum(key.credential[:0])
	}
	ps.mu.Lock()
	if ps.closed {
		ps.mu.Unlock()
		return nil, puddle.ErrClosedPool
	}
	pl := ps.pools[key]
	if pl == nil {
		pl = ps.pending[key]
	}
	if pl == nil {
		if ps.cfg.MaxPools > 0 && len(ps.pools)+len(ps.pending) >= ps.cfg.MaxPools && !ps.dropOneUnusedLocked() {
			ps.mu.Unlock()
			return nil, &TooManyPoolsError{Max: ps.cfg.MaxPools}
		}
		pl = ps.newPool(key, ps.size, ps.paused)
		ps.pending[key] = pl
	}
	pl.clients.Add(1)
	ps.mu.Unlock()

	err := pl.admit(ctx, p)
	ps.mu.Lock()
	var drop bool
	if ps.pending[key] == pl {
		switch {
		case err == nil:
			delete(ps.pending, key)
			ps.pools[key] = pl
		case pl.clients.Load() == 1: // the last client waiting on it
			delete(ps.pending, key)
			drop = true
		}
	}
	ps.mu.Unlock()
	if err != nil {
		pl.Leave()
		if drop {
			pl.close()
		}
		return nil, err
	}
	return pl, nil
}

// dropOneUnusedLocked makes room under MaxPools by forgetting one pool
// that no client uses: one without connections if there is one, else the
// one used least recently (its idle connections are closed). False if
// every pool has clients.
func (ps *Pools) dropOneUnusedLocked() bool {
	var victim *Pool
	var victimUsed time.Time
	for _, pl := range ps.pools {
		if pl.clients.Load() != 0 {
			continue
		}
		if pl.total() == 0 {
			victim = pl
			break
		}
		pl.mu.Lock()
		used := pl.lastUsed
		pl.mu.Unlock()
		if victim == nil || used.Before(victimUsed) {
			victim, victimUsed = pl, used
		}
	}
	if victim == nil {
		return false
	}
	delete(ps.pools, victim.key)
	go victim.close() // waits for the janitor, if it holds a connection
	return true
}

// TooManyPoolsError is a client whose database, user and credential would
// need one pool more than GATEKEEPER_MAX_POOLS allows.
type TooManyPoolsError struct{ Max int }

func (e *TooManyPoolsError) Error() string {
	return fmt.Sprintf("too many pools: GATEKEEPER_MAX_POOLS (%d) reached (one pool per database, user and credential); raise it, or use fewer distinct users and databases", e.Max)
}

// Close closes every pool: idle connections at once, the others when their
// sessions release them. It blocks until all are closed.
func (ps *Pools) Close() {
	ps.mu.Lock()
	if ps.closed {
		ps.mu.Unlock()
		return
	}
	ps.closed = true
	all := make([]*Pool, 0, len(ps.pools)+len(ps.pending))
	for _, pl := range ps.pools {
		all = append(all, pl)
	}
	for _, pl := range ps.pending {
		all = append(all, pl)
	}
	ps.mu.Unlock()
	close(ps.stop)
	<-ps.done
	for _, pl := range all {
		pl.close()
	}
}

func (ps *Pools) all() []*Pool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	out := make([]*Pool, 0, len(ps.pools))
	for _, pl := range ps.pools {
		out = append(out, pl)
	}
	return out
}

// Pool is the connections of one Key.
type Pool struct {
	key Key
	ps  *Pools
	// res holds the connections. Its MaxSize is a fixed ceiling; the
	// pool's size, which the admin API changes at run time, is enforced by
	// lim for leases and by the janitor and create for idle connections.
	res *puddle.Pool[*conn]
	lim limiter
	log zerolog.Logger

	admitMu      sync.Mutex // one credential check at a time; others wait for its verdict
	verifiedAt   time.Time  // guarded by admitMu
	lastAdmitErr error      // guarded by admitMu
	lastAdmitAt  time.Time  // guarded by admitMu

	mu       sync.Mutex
	password string             // pass-through: the verified credential, for dials; never logged
	scram    *backend.SCRAMKeys // pass-through: or these keys instead of a password; never logged
	params   map[string]string
	live     map[*conn]struct{}
	lastUsed time.Time

	// dials bounds the connections being opened at once, so a burst of
	// clients does not stampede the server with authentications (each a
	// SCRAM computation on both sides); the rest wait their turn.
	dials chan struct{}

	clients atomic.Int64 // admitted sessions holding this pool
	// shrunk: the size was lowered and the pool may still hold more
	// connections than it; until the janitor sees otherwise, a release
	// checks the count (a lock and an allocation in puddle, too much for
	// every transaction).
	shrunk atomic.Bool
	usable atomic.Bool // the credential worked; the janitor may dial with it
	// closing counts connections the pool closed whose server process has
	// not been seen to exit (a statement that ignores cancellation runs
	// on): they still count against the size.
	closing atomic.Int64
	stats   counters
}

// conn is a pooled backend connection and when it must go.
type conn struct {
	*backend.Conn
	retireAt atomic.Int64 // unix nanoseconds; drain moves it to now
}

func (c *conn) retired(at time.Time) bool { return at.UnixNano() >= c.retireAt.Load() }

func (ps *Pools) newPool(key Key, size int, paused bool) *Pool {
	pl := &Pool{key: key, ps: ps, live: map[*conn]struct{}{}, lastUsed: time.Now(),
		lim: limiter{size: size, paused: paused}, dials: make(chan struct{}, maxConcurrentDials),
		log: ps.log.With().Str("db", key.Database).Str("user", key.User).Logger()}
	pl.res, _ = puddle.NewPool(&puddle.Config[*conn]{
		Constructor: pl.construct,
		Destructor:  pl.destruct,
		MaxSize:     MaxSize,
	})
	return pl
}

// MaxSize is the largest size a pool can be given, at start-up or through
// the admin API.
const MaxSize = 100000

// maxConcurrentDials is how many connections one pool opens at a time.
const maxConcurrentDials = 4

// size is the pool's current size.
func (pl *Pool) size() int {
	size, _, _ := pl.lim.snapshot()
	return size
}

func (pl *Pool) admit(ctx context.Context, p backend.Params) error {
	pl.admitMu.Lock()
	defer pl.admitMu.Unlock()
	// Clients queue here while one of them checks with the server; if that
	// check timed out a moment ago, the rest get its answer rather than each
	// waiting out another dial to a server that is not answering. (A refusal,
	// such as a wrong password, is always asked of the server again.)
	if pl.lastAdmitErr != nil && time.Since(pl.lastAdmitAt) < admitErrorReuse {
		return pl.lastAdmitErr
	}
	err := pl.admitLocked(ctx, p)
	pl.lastAdmitErr = nil
	if err != nil && backend.Transient(err) {
		pl.lastAdmitErr, pl.lastAdmitAt = err, time.Now()
	}
	return err
}

// admitErrorReuse is how long a failed admission check answers the clients
// that waited for it.
const admitErrorReuse = time.Second

func (pl *Pool) admitLocked(ctx context.Context, p backend.Params) error {
	if pl.ps.tokenMode {
		if pl.StartupParams() != nil {
			return nil
		}
		// The first client of a key: a connection tells what the server reports.
		if err := pl.create(ctx); err != nil {
			return err
		}
		pl.usable.Store(true)
		return nil
	}
	if pl.StartupParams() != nil && time.Since(pl.verifiedAt) < pl.ps.cfg.AuthCacheTTL {
		return nil
	}
	pl.mu.Lock()
	oldPassword, oldSCRAM := pl.password, pl.scram
	pl.password, pl.scram = p.Password, p.SCRAM
	pl.mu.Unlock()
	err := pl.verify(ctx)
	if err != nil && ctx.Err() != nil {
		// Given up on before the credential was checked (the client
		// left, or shutdown): the pool goes on with the one it had.
		pl.mu.Lock()
		pl.password, pl.scram = oldPassword, oldSCRAM
		pl.mu.Unlock()
		return err
	}
	if err != nil {
		if backend.IsAuthFailure(err) {
			// The server no longer takes this credential: nothing
			// authenticated with it may be handed out again.
			pl.verifiedAt = time.Time{}
			pl.usable.Store(false)
			pl.res.Reset()
		}
		return err
	}
	pl.verifiedAt = time.Now()
	pl.usable.Store(true)
	return nil
}

// verify authenticates against the server with the pool's credential,
// within the pool's size (and not while paused): a new connection into
// the pool, in place of an idle one when the pool is full.
func (pl *Pool) verify(ctx context.Context) error {
	// The acquire timeout bounds the wait for room; the dial has the
	// connect timeout of its own, whatever is left of that wait.
	deadline := time.Now().Add(pl.ps.cfg.AcquireTimeout)
	wctx, cancel := context.WithDeadline(ctx, deadline)
	err := pl.lim.acquire(wctx)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return pl.timeoutError()
	}
	defer pl.lim.release()
	for attempt := 0; ; attempt++ {
		// The login may have been given up on while it waited.
		if runWaitCheck(ctx); ctx.Err() != nil {
			return ctx.Err()
		}
		err := pl.createHeld(ctx)
		if !errors.Is(err, puddle.ErrNotAvailable) {
			return err
		}
		// Full: an idle connection makes room for the check, so the
		// server never sees more than the size (the slot held means one
		// is idle, about to be, or on its way out).
		res, err := pl.res.Acquire(ctx)
		switch {
		case err == nil:
			pl.destroy(res, reasons.CredentialCheck)
		case !errors.Is(err, errAtSize):
			return err
		case !time.Now().Before(deadline):
			return pl.timeoutError()
		default:
			if err := waitForRoom(ctx, attempt); err != nil {
				return err
			}
		}
	}
}

// errAtSize is a dial refused because the pool already holds its size in
// connections, counting those being opened: the caller waits for one of
// them rather than open one more.
var errAtSize = errors.New("pool at its size")

// waitForRoom pauses before another look at a pool that was at its size:
// the connections that filled it are on their way to being idle (held a
// moment by the janitor, or still being opened for a client that gave up).
func waitForRoom(ctx context.Context, attempt int) error {
	// From a millisecond (the janitor lets go within microseconds) up to
	// 50 (a server process that has not exited yet may take long).
	t := time.NewTimer(min(time.Millisecond<<min(attempt, 6), 50*time.Millisecond))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// create dials one connection into the pool as idle, or returns
// puddle.ErrNotAvailable when the pool is at its size (or paused, or
// clients are waiting: they will open what they need themselves).
//
// The dial holds a slot of the limiter, as a client's would: connections
// being opened and leased never exceed the size together, and a client
// finds an idle connection before it opens one, so the pool never holds
// more than its size even while the janitor replaces connections.
func (pl *Pool) create(ctx context.Context) error {
	if !pl.lim.tryAcquire() {
		return puddle.ErrNotAvailable
	}
	defer pl.lim.release()
	return pl.createHeld(ctx)
}

// createHeld is create for a caller that holds a limiter slot.
func (pl *Pool) createHeld(ctx context.Context) error {
	if pl.total() >= pl.size() {
		return puddle.ErrNotAvailable
	}
	return pl.res.CreateResource(ctx)
}

func (pl *Pool) dialParams() backend.Params {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return backend.Params{User: pl.key.User, Database: pl.key.Database, Password: pl.password, SCRAM: pl.scram}
}

func (pl *Pool) construct(ctx context.Context) (*conn, error) {
	// The limiter bounds leases, not connections: a connection can be
	// idle yet out of reach (the janitor is looking at it) or still being
	// opened for a client that gave up (puddle finishes the dial and keeps
	// the connection), and a client finding none idle then lands here.
	// puddle counts this connection already, so more than the size means
	// one too many.
	if pl.total() > pl.size() {
		return nil, errAtSize
	}
	// puddle gives constructors no cancellation but Close; the dial
	// itself is bounded by the connect timeout, and so is this wait.
	select {
	case pl.dials <- struct{}{}:
	case <-time.After(pl.ps.dialWait()):
		return nil, errors.New("backend dial failed: too many connections being opened at once; try again")
	}
	c, err := pl.ps.dialer.Dial(ctx, pl.dialParams())
	<-pl.dials
	if err != nil {
		pl.stats.dialFailures.Add(1)
		return nil, err
	}
	jitter := pl.ps.cfg.jitter()
	lifetime := pl.ps.cfg.MaxConnLifetime
	if jitter > 0 {
		lifetime -= mathrand.N(jitter)
	}
	retireAt := c.Created().Add(lifetime)
	// Retired, and replaced with a fresh token, before its token's
	// horizon; spread over the last fifth of the token's window (after
	// the refresh ahead has a new token ready), so a pool does not retire
	// all at once.
	if until := c.CredentialUseUntil(); !until.IsZero() && until.Before(retireAt) {
		retireAt = until
		if spread := min(jitter, until.Sub(c.Created())/5); spread > 0 {
			retireAt = until.Add(-mathrand.N(spread))
		}
	}
	pc := &conn{Conn: c}
	pc.retireAt.Store(retireAt.UnixNano())
	pl.mu.Lock()
	if pl.params == nil {
		pl.params = maps.Clone(c.ParameterStatus())
	}
	pl.live[pc] = struct{}{}
	pl.mu.Unlock()
	pl.stats.created.Add(1)
	pl.log.Debug().Uint32("backend_pid", c.PID()).Time("retire_at", retireAt).Msg("backend connection opened")
	return pc, nil
}

// destruct is puddle's destructor, for what puddle closes itself (Reset
// after a refused credential, Close): on a goroutine of its own, where
// waiting for the server process costs no one.
func (pl *Pool) destruct(c *conn) {
	pl.mu.Lock()
	delete(pl.live, c)
	pl.mu.Unlock()
	if !c.Terminate(terminateWait) {
		c.AwaitGone(pl.ps.stop)
	}
}

// destroy closes a connection for reason, which feeds the log and stats.
//
// The pool goes on counting the connection until the server process
// behind it has exited (closing), so a replacement never coexists with it
// on the server: at once for an idle backend, which exits within
// terminateWait on the caller's goroutine (puddle's own Destroy would
// close it later, on another, without waiting), in the background for one
// still running a statement.
func (pl *Pool) destroy(res *puddle.Resource[*conn], reason reasons.Reason) {
	pl.awaitClose(pl.startClose(res, reason), reason)
}

// startClose is destroy's first half: the connection leaves puddle and is
// counted as closing. What follows it may run on another goroutine.
func (pl *Pool) startClose(res *puddle.Resource[*conn], reason reasons.Reason) *conn {
	pl.stats.closed(reason)
	c := res.Value()
	pl.log.Debug().Uint32("backend_pid", c.PID()).Str("reason", string(reason)).Msg("backend connection closed")
	pl.mu.Lock()
	delete(pl.live, c)
	pl.mu.Unlock()
	pl.closing.Add(1) // before puddle forgets it, so the total never dips
	res.Hijack()
	return c
}

// awaitClose is destroy's second half: the close itself, and the wait for
// the server process to exit.
func (pl *Pool) awaitClose(c *conn, reason reasons.Reason) {
	if c.Terminate(terminateWait) {
		pl.closing.Add(-1)
		return
	}
	pl.log.Warn().Uint32("backend_pid", c.PID()).Str("reason", string(reason)).Dur("waited", terminateWait).
		Msg("backend connection closed, but its server process has not exited (a statement that does not end on cancel, or a slow exit); it counts against the pool until it does")
	go func() {
		gone := c.AwaitGone(pl.ps.stop)
		pl.closing.Add(-1)
		if gone {
			pl.log.Info().Uint32("backend_pid", c.PID()).Msg("backend server process exited")
		}
	}()
}

// terminateWait is how long a close waits for the server process to exit
// before the wait goes on in the background: an idle backend exits at once
// (a few milliseconds; longer when it drops many temporary tables).
const terminateWait = 100 * time.Millisecond

// StartupParams is what the server reported at start-up on this pool's
// first connection: the ParameterStatus set a new client is given. Nil
// until a connection was made.
func (pl *Pool) StartupParams() map[string]string {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return pl.params
}

// close closes the pool, waiting for leased connections.
func (pl *Pool) close() { pl.res.Close() }

// total counts the pool's connections, idle, leased and being opened, and
// those closed whose server process has not exited yet.
func (pl *Pool) total() int { return int(pl.res.Stat().TotalResources() + int32(pl.closing.Load())) }

// Leave is called once per Admit, when the client has gone.
func (pl *Pool) Leave() {
	pl.mu.Lock()
	pl.lastUsed = time.Now()
	pl.mu.Unlock()
	pl.clients.Add(-1)
}

// AcquireTimeoutError is a client that waited AcquireTimeout for a
// connection of a full pool.
type AcquireTimeoutError struct {
	Key     Key
	Size    int
	Timeout time.Duration
}

func (e *AcquireTimeoutError) Error() string {
	return fmt.Sprintf("no backend connection for database %q user %q within %s: the pool is full (GATEKEEPER_POOL_SIZE=%d; raise it, or GATEKEEPER_POOL_ACQUIRE_TIMEOUT)",
		e.Key.Database, e.Key.User, e.Timeout, e.Size)
}

// Acquire hands out an idle connection, or a new one while the pool has
// room, or waits up to AcquireTimeout (and while the pools are paused).
// Connections found dead or past their retirement are replaced without the
// caller seeing it.
func (pl *Pool) Acquire(ctx context.Context) (*Lease, error) {
	start := time.Now()
	deadline := start.Add(pl.ps.cfg.AcquireTimeout)
	// The acquire timeout bounds waiting for a full or paused pool. Most
	// acquires find a free slot at once and need no timer (in transaction
	// mode this runs for every transaction): what is left, an idle
	// connection or a dial, is bounded by the connect timeout.
	if !pl.lim.tryAcquire() {
		wctx, cancel := context.WithDeadline(ctx, deadline)
		err := pl.lim.acquire(wctx)
		cancel()
		if err != nil {
			if errors.Is(wctx.Err(), context.DeadlineExceeded) {
				return nil, pl.timeoutError()
			}
			return nil, err
		}
		// The caller's client may have gone since the last check.
		if runWaitCheck(ctx); ctx.Err() != nil {
			pl.lim.release()
			return nil, ctx.Err()
		}
	}
	waited := false // the last round waited before trying again
	for attempt := 0; ; attempt++ {
		if waited {
			waited = false
			if runWaitCheck(ctx); ctx.Err() != nil {
				pl.lim.release()
				return nil, ctx.Err()
			}
		}
		res, err := pl.res.Acquire(ctx)
		if errors.Is(err, errAtSize) {
			if err = waitForRoom(ctx, attempt); err == nil && time.Now().Before(deadline) {
				waited = true
				continue
			}
			if err == nil {
				err = errAtSize
			}
		}
		if err != nil && backend.Transient(err) && pl.total() > 0 && ctx.Err() == nil {
			// The server is slow to take new connections but this pool has
			// some: wait for one of them rather than fail the client.
			if wait := time.Until(deadline); wait > 0 {
				t := time.NewTimer(min(wait, 50*time.Millisecond))
				select {
				case <-t.C:
					waited = true
					continue
				case <-ctx.Done():
					t.Stop()
				}
			}
		}
		if err != nil {
			pl.lim.release()
			// Our own deadline, not one inside the error: a token command
			// that timed out wraps context.DeadlineExceeded too.
			if ctx.Err() == nil && !time.Now().Before(deadline) {
				return nil, pl.timeoutError()
			}
			return nil, err
		}
		c := res.Value()
		if c.retired(time.Now()) {
			pl.stats.retired.Add(1) // before the close the server sees
			pl.destroy(res, reasons.Lifetime)
			continue
		}
		if !c.Alive() {
			pl.destroy(res, reasons.BackendGone)
			continue
		}
		pl.stats.acquired(time.Since(start))
		return &Lease{res: res, pool: pl, conn: c}, nil
	}
}

func (pl *Pool) timeoutError() error {
	if pl.ps.isPaused() {
		return &PausedError{Timeout: pl.ps.cfg.AcquireTimeout}
	}
	pl.stats.acquireTimeouts.Add(1)
	size, _, _ := pl.lim.snapshot()
	return &AcquireTimeoutError{Key: pl.key, Size: size, Timeout: pl.ps.cfg.AcquireTimeout}
}

// PausedError is a client that waited AcquireTimeout while the pools were
// paused through the admin API.
type PausedError struct {
	Timeout time.Duration
}

func (e *PausedError) Error() string {
	return fmt.Sprintf("no backend connection within %s: the pools are paused (POST /v1/resume on the admin API resumes them)", e.Timeout)
}

// dialWait bounds how long a constructor waits for its turn to dial.
func (ps *Pools) dialWait() time.Duration {
	return max(ps.cfg.AcquireTimeout, time.Second)
}
