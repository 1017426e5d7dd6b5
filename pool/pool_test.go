package pool

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/backend"
)

// Unit tests of the pool with a fake dialer: each connection is one end of
// a net.Pipe whose other end answers every query with CommandComplete and
// ReadyForQuery 'I', as a server would answer the reset and ROLLBACK. The
// end-to-end behaviour against PostgreSQL is tested in wire.

type fakeDialer struct {
	mu      sync.Mutex
	pid     uint32
	open    map[uint32]bool // server ends still open, by pid
	horizon time.Duration   // credential horizon given to new connections (0: none)
	fail    error
	dials   atomic.Int64
	gate    chan struct{} // when set, a dial waits for a value from it
	held    int           // gateway ends not yet closed
	peak    int           // most gateway ends open at once
	// linger, when set, keeps a server end that got Terminate open until
	// it is closed: a process still running a statement that ignores
	// cancellation.
	linger     chan struct{}
	serverPeak int           // most server ends open at once
	delay      time.Duration // how long a dial takes
	terminated []time.Time   // when each Terminate arrived
}

// heldConn is the gateway's end of a fake connection, counted until closed.
type heldConn struct {
	net.Conn
	d    *fakeDialer
	once sync.Once
}

func (c *heldConn) Close() error {
	c.once.Do(func() {
		c.d.mu.Lock()
		c.d.held--
		c.d.mu.Unlock()
	})
	return c.Conn.Close()
}

func newFakeDialer() *fakeDialer { return &fakeDialer{open: map[uint32]bool{}} }

func (d *fakeDialer) Dial(ctx context.Context, p backend.Params) (*backend.Conn, error) {
	d.dials.Add(1)
	d.mu.Lock()
	gate, delay := d.gate, d.delay
	d.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	d.mu.Lock()
	if d.fail != nil {
		err := d.fail
		d.mu.Unlock()
		return nil, err
	}
	d.pid++
	pid := d.pid
	d.open[pid] = true
	d.held++
	d.peak = max(d.peak, d.held)
	open := 0
	for _, o := range d.open {
		if o {
			open++
		}
	}
	d.serverPeak = max(d.serverPeak, open)
	linger := d.linger
	var until time.Time
	if d.horizon > 0 {
		until = time.Now().Add(d.horizon)
	}
	d.mu.Unlock()
	client, server := net.Pipe()
	go d.serve(pid, server, linger)
	return backend.NewConn(&heldConn{Conn: client, d: d}, pid, map[string]string{"server_version": "15"}, until), nil
}

// serve answers queries until the client terminates or closes.
func (d *fakeDialer) serve(pid uint32, c net.Conn, linger chan struct{}) {
	defer func() {
		c.Close()
		d.mu.Lock()
		d.open[pid] = false
		d.mu.Unlock()
	}()
	be := pgproto3.NewBackend(c, c)
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		switch msg.(type) {
		case *pgproto3.Terminate:
			d.mu.Lock()
			d.terminated = append(d.terminated, time.Now())
			d.mu.Unlock()
			if linger != nil {
				<-linger
			}
			return
		case *pgproto3.Query:
			be.Send(&pgproto3.CommandComplete{CommandTag: []byte("DISCARD ALL")})
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			if be.Flush() != nil {
				return
			}
		}
	}
}

func (d *fakeDialer) setGate(gate chan struct{}) {
	d.mu.Lock()
	d.gate = gate
	d.mu.Unlock()
}

func (d *fakeDialer) peakOpen() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.peak
}

func (d *fakeDialer) openCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, open := range d.open {
		if open {
			n++
		}
	}
	return n
}

func testPools(t *testing.T, cfg Config, d *fakeDialer) (*Pools, *Pool) {
	t.Helper()
	if cfg.MaxConnLifetime == 0 {
		cfg.MaxConnLifetime = time.Hour
	}
	if cfg.MaxConnIdleTime == 0 {
		cfg.MaxConnIdleTime = time.Hour
	}
	if cfg.AcquireTimeout == 0 {
		cfg.AcquireTimeout = 5 * time.Second
	}
	if cfg.ResetQuery == "" {
		cfg.ResetQuery = "DISCARD ALL"
	}
	ps := New(cfg, d, true, zerolog.Nop())
	t.Cleanup(ps.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pl, err := ps.Admit(ctx, backend.Params{User: "u", Database: "db"})
	if err != nil {
		t.Fatalf("Admit: %v", err)
	}
	t.Cleanup(pl.Leave)
	return ps, pl
}

func acquire(t *testing.T, pl *Pool) *Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := pl.Acquire(ctx)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	return l
}

var clean = ReleaseState{Clean: true, TxStatus: 'I'}

// settled waits for puddle's asynchronous destroys to finish: a destroyed
// connection leaves the totals only once its destructor has returned.
func settled(pl *Pool, done func(Stats) bool) Stats {
	deadline := time.Now().Add(2 * time.Second)
	for {
		st := pl.Stats()
		if done(st) || time.Now().After(deadline) {
			return st
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLimiterServesInOrderAndResizes(t *testing.T) {
	l := limiter{size: 1}
	if !l.tryAcquire() {
		t.Fatal("first slot not free")
	}
	order := make(chan int, 2)
	var wg sync.WaitGroup
	for i := 1; i <= 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.acquire(context.Background()); err == nil {
				order <- i
			}
		}()
		for _, _, waiting := l.snapshot(); waiting < i; _, _, waiting = l.snapshot() {
			time.Sleep(time.Millisecond)
		}
	}
	if w := l.oldestWait(time.Now().Add(time.Hour)); w < time.Hour {
		t.Errorf("oldestWait an hour on = %s, want at least an hour", w)
	}
	l.release()
	if got := <-order; got != 1 {
		t.Errorf("released slot went to waiter %d, want the first", got)
	}
	l.resize(2)
	wg.Wait()
	if got := <-order; got != 2 {
		t.Errorf("resize served waiter %d, want 2", got)
	}
	if size, held, waiting := l.snapshot(); size != 2 || held != 2 || waiting != 0 {
		t.Errorf("snapshot %d/%d/%d, want 2 held of 2, none waiting", held, size, waiting)
	}
	if w := l.oldestWait(time.Now().Add(time.Hour)); w != 0 {
		t.Errorf("oldestWait with nobody waiting = %s, want 0", w)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := l.acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("acquire on a full limiter: %v", err)
	}
	if _, _, waiting := l.snapshot(); waiting != 0 {
		t.Errorf("a timed-out waiter stayed queued")
	}
}

func TestAcquireTimeoutNamesTheSettings(t *testing.T) {
	_, pl := testPools(t, Config{Size: 1, AcquireTimeout: 50 * time.Millisecond}, newFakeDialer())
	l := acquire(t, pl)
	defer l.Release(clean)
	_, err := pl.Acquire(context.Background())
	var te *AcquireTimeoutError
	if !errors.As(err, &te) || te.Size != 1 {
		t.Fatalf("Acquire on a full pool: %v, want an AcquireTimeoutError of size 1", err)
	}
	if pl.Stats().AcquireTimeouts != 1 {
		t.Errorf("acquire timeouts = %d, want 1", pl.Stats().AcquireTimeouts)
	}
}

func TestResizeWithoutCuttingSessions(t *testing.T) {
	d := newFakeDialer()
	ps, pl := testPools(t, Config{Size: 2}, d)
	a, b := acquire(t, pl), acquire(t, pl)
	// Grow: a third client gets a connection at once.
	ps.Resize("", "", 3)
	c := acquire(t, pl)
	if got := pl.Stats().InUse; got != 3 {
		t.Fatalf("in use %d, want 3", got)
	}
	// Shrink below what is leased: nothing is cut, the surplus closes as
	// it is released.
	ps.Resize("db", "u", 1)
	if got := d.openCount(); got != 3 {
		t.Fatalf("%d connections open after shrinking with 3 leased, want 3", got)
	}
	for _, l := range []*Lease{a, b, c} {
		if _, err := l.Conn().Exec(context.Background(), "select 1"); err != nil {
			t.Fatalf("a leased connection stopped working after the shrink: %v", err)
		}
		l.Release(clean)
	}
	st := settled(pl, func(st Stats) bool { return st.Total == 1 })
	if st.Total != 1 || st.Size != 1 || st.Closed["resize"] != 2 {
		t.Errorf("after releasing: total %d size %d closed %v; want 1, 1, 2 for resize", st.Total, st.Size, st.Closed)
	}
	// Shrink with idle connections: the janitor closes them.
	ps.Resize("", "", 3)
	x, y, z := acquire(t, pl), acquire(t, pl), acquire(t, pl)
	for _, l := range []*Lease{x, y, z} {
		l.Release(clean)
	}
	ps.Resize("", "", 1)
	if st := settled(pl, func(st Stats) bool { return st.Total == 1 }); st.Total != 1 || st.Idle != 1 {
		t.Errorf("after shrinking an idle pool: total %d idle %d, want 1 and 1", st.Total, st.Idle)
	}
}

func TestLifetimeJitterSpreadsRetirement(t *testing.T) {
	jitter := 10 * time.Minute
	_, pl := testPools(t, Config{Size: 20, MaxConnLifetime: time.Hour, LifetimeJitter: &jitter}, newFakeDialer())
	var leases []*Lease
	for i := 0; i < 20; i++ {
		leases = append(leases, acquire(t, pl))
	}
	distinct := map[int64]bool{}
	for _, l := range leases {
		c := l.conn
		retire := time.Unix(0, c.retireAt.Load())
		earliest, latest := c.Created().Add(50*time.Minute), c.Created().Add(time.Hour)
		if retire.Before(earliest) || retire.After(latest) {
			t.Errorf("retireAt %s outside [created+50m, created+60m]", retire.Sub(c.Created()))
		}
		distinct[c.retireAt.Load()] = true
		l.Release(clean)
	}
	if len(distinct) < 10 {
		t.Errorf("20 connections share %d retirement times: the jitter does not spread them", len(distinct))
	}
}

func TestTokenHorizonRetiresAhead(t *testing.T) {
	d := newFakeDialer()
	d.horizon = 300 * time.Millisecond
	_, pl := testPools(t, Config{Size: 2, MaxConnLifetime: time.Hour}, d)
	l := acquire(t, pl)
	c := l.conn
	if until := c.CredentialUseUntil(); time.Unix(0, c.retireAt.Load()).After(until) {
		t.Errorf("retireAt is after the credential's horizon")
	}
	l.Release(clean)
	d.horizon = time.Hour // the replacement gets a fresh credential
	time.Sleep(350 * time.Millisecond)
	pl.maintain()
	st := pl.Stats()
	if st.Retired < 1 || st.Closed["lifetime"] < 1 {
		t.Fatalf("after the horizon: retired %d, closed %v; want the connection retired", st.Retired, st.Closed)
	}
	// The replacement was made ahead, so the next client waits for no dial.
	l2 := acquire(t, pl)
	if l2.conn == c {
		t.Errorf("a connection past its credential's horizon was handed out")
	}
	l2.Release(clean)
}

func TestMinIdleAndIdleTimeout(t *testing.T) {
	d := newFakeDialer()
	_, pl := testPools(t, Config{Size: 4, MinIdle: 2, MaxConnIdleTime: 100 * time.Millisecond}, d)
	pl.maintain()
	if st := pl.Stats(); st.Idle != 2 {
		t.Fatalf("idle %d, want GATEKEEPER_POOL_MIN_IDLE=2", st.Idle)
	}
	// Four in use, then idle past the idle time: back down to MinIdle.
	var leases []*Lease
	for i := 0; i < 4; i++ {
		leases = append(leases, acquire(t, pl))
	}
	for _, l := range leases {
		l.Release(clean)
	}
	time.Sleep(150 * time.Millisecond)
	pl.maintain()
	// The background janitor may examine the pool at the same moment and
	// close one more, which the minimum then opens again: at least two
	// closed for idle, two left.
	if st := settled(pl, func(st Stats) bool { return st.Total == 2 }); st.Total != 2 || st.Closed["idle"] < 2 {
		t.Errorf("after the idle time: total %d closed %v, want 2 kept and at least 2 closed for idle", st.Total, st.Closed)
	}
}

func TestReleaseStates(t *testing.T) {
	d := newFakeDialer()
	_, pl := testPools(t, Config{Size: 1}, d)
	for _, tc := range []struct {
		name   string
		st     ReleaseState
		closed string // reason, or "" when the connection is kept
	}{
		{"clean", clean, ""},
		{"broken", ReleaseState{Broken: true}, "backend-gone"},
		{"left mid-request", ReleaseState{Clean: false, TxStatus: 'I'}, "client-gone"},
		{"session state no reset removes", ReleaseState{Clean: true, TxStatus: 'I', Discard: true}, "session-state"},
	} {
		before := pl.Stats().Closed[tc.closed]
		l := acquire(t, pl)
		l.Release(tc.st)
		if tc.closed == "" {
			if st := pl.Stats(); st.Idle != 1 {
				t.Errorf("%s: idle %d, want the connection kept", tc.name, st.Idle)
			}
			continue
		}
		if got := pl.Stats().Closed[tc.closed]; got != before+1 {
			t.Errorf("%s: closed for %s %d times, want %d", tc.name, tc.closed, got, before+1)
		}
	}
}

// A client that gives up while its connection is being opened must not
// free room for a second dial: the first one still completes (puddle does
// not cut a constructor short) and would join the pool beside it, one over
// GATEKEEPER_POOL_SIZE on the server.
func TestAbandonedDialKeepsThePoolWithinItsSize(t *testing.T) {
	d := newFakeDialer()
	_, pl := testPools(t, Config{Size: 2}, d) // Admit opened one connection
	held := acquire(t, pl)
	defer held.Release(clean)

	gate := make(chan struct{})
	d.setGate(gate)
	ctx, cancel := context.WithCancel(context.Background())
	abandoned := make(chan error, 1)
	go func() {
		_, err := pl.Acquire(ctx)
		abandoned <- err
	}()
	for d.dials.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-abandoned; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned Acquire: %v, want context.Canceled", err)
	}

	next := make(chan *Lease, 1)
	go func() { next <- acquire(t, pl) }()
	time.Sleep(50 * time.Millisecond) // long enough for a second dial to start
	d.setGate(nil)
	close(gate)
	l := <-next
	l.Release(clean)
	if peak := d.peakOpen(); peak > 2 {
		t.Errorf("%d connections open at once, GATEKEEPER_POOL_SIZE=2", peak)
	}
	if st := pl.Stats(); st.Total > 2 {
		t.Errorf("pool holds %d connections, size 2", st.Total)
	}
}

// Clients queueing for a busy pool while the janitor examines its idle
// connections: the janitor briefly holds connections it has no slot for,
// and a client that finds none idle must wait for them, not dial one more.
func TestJanitorNeverLetsAClientDialPastTheSize(t *testing.T) {
	d := newFakeDialer()
	const size = 3
	_, pl := testPools(t, Config{Size: size}, d)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 3000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				l, err := pl.Acquire(context.Background())
				if err != nil {
					t.Errorf("Acquire: %v", err)
					return
				}
				l.Release(clean)
			}
		}()
	}
	deadline := time.Now().Add(2 * time.Second)
	for i := 0; i < 20000 && time.Now().Before(deadline); i++ {
		pl.maintain()
	}
	close(stop)
	wg.Wait()
	if peak := d.peakOpen(); peak > size {
		t.Errorf("%d connections open at once, GATEKEEPER_POOL_SIZE=%d", peak, size)
	}
}

// In pass-through mode a password is checked against the server again
// once GATEKEEPER_POOL_AUTH_CACHE_TTL has passed. With the pool full, the
// check takes an idle connection's place rather than open one beside it.
func TestCredentialCheckOnAFullPoolStaysWithinItsSize(t *testing.T) {
	d := newFakeDialer()
	ps := New(Config{Size: 1, MaxConnLifetime: time.Hour, MaxConnIdleTime: time.Hour,
		AcquireTimeout: 5 * time.Second, ResetQuery: "DISCARD ALL"}, d, false, zerolog.Nop())
	t.Cleanup(ps.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p := backend.Params{User: "u", Database: "db", Password: "pw"}
	for i := range 3 { // AuthCacheTTL 0: every admission is checked
		pl, err := ps.Admit(ctx, p)
		if err != nil {
			t.Fatalf("Admit %d: %v", i, err)
		}
		l := acquire(t, pl)
		l.Release(clean)
		pl.Leave()
		if got := pl.Stats().Closed["credential-check"]; got != int64(i) {
			t.Errorf("admission %d: %d connections closed for credential-check, want %d", i, got, i)
		}
	}
	if peak := d.peakOpen(); peak > 1 {
		t.Errorf("%d connections open at once, GATEKEEPER_POOL_SIZE=1", peak)
	}
	if got := d.dials.Load(); got != 3 {
		t.Errorf("%d dials for three checked admissions, want 3", got)
	}
}

// A client that left in the middle of a statement that ignores the cancel:
// PostgreSQL's process runs on until the statement ends, whatever the
// gateway does with its socket, and still takes a connection slot on the
// server. The pool must count it until it is gone, not open a replacement
// beside it.
func TestClosedConnectionCountsUntilTheServerProcessExits(t *testing.T) {
	d := newFakeDialer()
	linger := make(chan struct{})
	var stopLinger sync.Once
	defer stopLinger.Do(func() { close(linger) })
	d.linger = linger
	_, pl := testPools(t, Config{Size: 1, AcquireTimeout: 300 * time.Millisecond}, d)
	l := acquire(t, pl) // the connection Admit opened
	l.Release(ReleaseState{Clean: false, TxStatus: 'I'})
	if l, err := pl.Acquire(context.Background()); !errors.As(err, new(*AcquireTimeoutError)) {
		if err == nil {
			l.Release(clean)
		}
		t.Fatalf("Acquire while the closed connection's server process runs: %v, want an AcquireTimeoutError", err)
	}
	d.mu.Lock()
	d.linger = nil
	d.mu.Unlock()
	stopLinger.Do(func() { close(linger) })
	l = acquire(t, pl)
	l.Release(clean)
	d.mu.Lock()
	peak := d.serverPeak
	d.mu.Unlock()
	if peak > 1 {
		t.Errorf("%d server processes at once, GATEKEEPER_POOL_SIZE=1", peak)
	}
}

// A resize or pause made while a pool's first login is being checked
// reaches that pool too.
func TestControlReachesAPoolWhoseFirstLoginIsBeingChecked(t *testing.T) {
	d := newFakeDialer()
	gate := make(chan struct{})
	d.setGate(gate)
	ps := New(Config{Size: 3, MaxConnLifetime: time.Hour, MaxConnIdleTime: time.Hour,
		AcquireTimeout: 200 * time.Millisecond, ResetQuery: "DISCARD ALL"}, d, true, zerolog.Nop())
	t.Cleanup(ps.Close)
	admitted := make(chan *Pool, 1)
	go func() {
		pl, err := ps.Admit(context.Background(), backend.Params{User: "u", Database: "db"})
		if err != nil {
			t.Errorf("Admit: %v", err)
		}
		admitted <- pl
	}()
	for d.dials.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	if n := ps.Resize("db", "u", 1); n != 1 {
		t.Errorf("Resize during the first login changed %d pools, want 1", n)
	}
	ps.Pause()
	d.setGate(nil)
	close(gate)
	pl := <-admitted
	if pl == nil {
		t.FailNow()
	}
	defer pl.Leave()
	if st := pl.Stats(); st.Size != 1 {
		t.Errorf("size %d after a resize to 1 during the first login", st.Size)
	}
	if l, err := pl.Acquire(context.Background()); !errors.As(err, new(*PausedError)) {
		if err == nil {
			l.Release(clean)
		}
		t.Errorf("Acquire after a pause during the first login: %v, want a PausedError", err)
	}
}

// A password check that got room near the end of its acquire wait still
// has the connect timeout for its dial: the wait bounds waiting, not the
// login, and the client must not get a dial timeout from a healthy server.
func TestCredentialCheckDialIsNotCutByTheAcquireWait(t *testing.T) {
	d := newFakeDialer()
	ps := New(Config{Size: 1, MaxConnLifetime: time.Hour, MaxConnIdleTime: time.Hour,
		AcquireTimeout: 300 * time.Millisecond, ResetQuery: "DISCARD ALL"}, d, false, zerolog.Nop())
	t.Cleanup(ps.Close)
	p := backend.Params{User: "u", Database: "db", Password: "pw"}
	pl, err := ps.Admit(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Leave()
	l := acquire(t, pl)
	d.mu.Lock()
	d.delay = 200 * time.Millisecond
	d.mu.Unlock()
	go func() {
		time.Sleep(200 * time.Millisecond) // room comes 100 ms before the wait ends
		l.Release(clean)
	}()
	pl2, err := ps.Admit(context.Background(), p) // AuthCacheTTL 0: checked again
	if err != nil {
		t.Fatalf("Admit whose check got room late: %v", err)
	}
	pl2.Leave()
}

// The wait check runs while a client waits for a full pool, never when a
// connection is free at once, and ends the wait when it ends the context:
// the client leaves the queue and the pool is not counted as timed out.
func TestWaitCheckEndsTheWaitOfAFullPool(t *testing.T) {
	_, pl := testPools(t, Config{Size: 1, AcquireTimeout: 10 * time.Second}, newFakeDialer())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var checks atomic.Int32
	checked := WithWaitCheck(ctx, func() {
		if checks.Add(1) == 2 {
			cancel()
		}
	})
	held, err := pl.Acquire(checked)
	if err != nil {
		t.Fatalf("Acquire on a free pool: %v", err)
	}
	if n := checks.Load(); n != 0 {
		t.Errorf("an acquire that did not wait was checked %d times", n)
	}
	start := time.Now()
	if _, err := pl.Acquire(checked); !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire on a full pool whose check ended the wait: %v, want context.Canceled", err)
	}
	if n, took := checks.Load(), time.Since(start); n != 2 || took < waitCheckEvery {
		t.Errorf("the wait ended after %d checks and %s, want after the second check", n, took)
	}
	if st := pl.Stats(); st.Waiting != 0 || st.AcquireTimeouts != 0 {
		t.Errorf("after the check ended the wait: %d waiting, %d acquire timeouts; want none", st.Waiting, st.AcquireTimeouts)
	}
	held.Release(clean)
	// The slot the departed waiter left is free for the next client.
	acquire(t, pl).Release(clean)
}

// Idle connections the janitor closes together wait for their server
// processes side by side: pausing a pool of twenty whose server does not
// let its processes go costs one terminateWait, not twenty in a row (the
// janitor keeps every pool, and would be held that long).
func TestJanitorClosesIdleConnectionsSideBySide(t *testing.T) {
	d := newFakeDialer()
	linger := make(chan struct{})
	defer close(linger)
	d.linger = linger // Terminate is not followed by an exit
	ps, pl := testPools(t, Config{Size: 20}, d)
	var leases []*Lease
	for range 20 {
		leases = append(leases, acquire(t, pl))
	}
	for _, l := range leases {
		l.Release(clean)
	}
	ps.Pause()
	defer ps.Resume()
	st := settled(pl, func(st Stats) bool { return st.Closed["pause"] == 20 })
	if st.Closed["pause"] != 20 {
		t.Fatalf("closed for the pause: %v, want all 20", st.Closed)
	}
	deadline := time.Now().Add(5 * time.Second)
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(d.terminated) < 20 && time.Now().Before(deadline) {
		d.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		d.mu.Lock()
	}
	if len(d.terminated) != 20 {
		t.Fatalf("%d Terminates reached the server, want 20", len(d.terminated))
	}
	// One after another, each would wait terminateWait before the next.
	first, last := slices.MinFunc(d.terminated, time.Time.Compare), slices.MaxFunc(d.terminated, time.Time.Compare)
	if spread := last.Sub(first); spread >= 10*terminateWait {
		t.Errorf("the 20 Terminates were spread over %s: closed one after another (each waits up to %s)", spread, terminateWait)
	}
}
