package wire

import (
	"context"
	"sync"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/pool"
)

// What a session needs of the pool, declared here by its consumer: the
// relays and the start-up stages see these three interfaces, never the
// pool's types, so they can be tested against a fake pool and the pool can
// change inside. PoolsOf adapts the real one. pool's error types
// (AcquireTimeoutError, PausedError, TooManyPoolsError) and ReleaseState
// are the vocabulary of this contract and stay pool's.

// Pools admits an authenticated client to the pool for its database, user
// and credential.
type Pools interface {
	Admit(ctx context.Context, p backend.Params) (Pool, error)
}

// Pool is the pool one client was admitted to.
type Pool interface {
	// Acquire lends a backend connection, waiting at most the pool's
	// acquire timeout (or until ctx ends).
	Acquire(ctx context.Context) (Lease, error)
	// Leave ends the admission when the session ends.
	Leave()
	// StartupParams are the ParameterStatus values the server reported,
	// which the handoff passes on to the client.
	StartupParams() map[string]string
}

// Lease is one backend connection lent to a session until Release.
type Lease interface {
	// Conn stays valid after Release (it may then serve someone else).
	Conn() *backend.Conn
	Release(st pool.ReleaseState)
}

// PoolsOf presents the gateway's pools to the server.
func PoolsOf(ps *pool.Pools) Pools { return poolsAdapter{ps} }

type poolsAdapter struct{ ps *pool.Pools }

func (a poolsAdapter) Admit(ctx context.Context, p backend.Params) (Pool, error) {
	pl, err := a.ps.Admit(ctx, p)
	if err != nil {
		return nil, err
	}
	return poolAdapter{pl}, nil
}

// poolAdapter holds one pointer, so it goes into an interface without an
// allocation, and two of them for the same pool compare equal (the
// start-up settings check keys its memory on the pool).
type poolAdapter struct{ *pool.Pool }

func (a poolAdapter) Acquire(ctx context.Context) (Lease, error) {
	l, err := a.Pool.Acquire(ctx)
	if err != nil {
		return nil, err // never a typed nil in the interface
	}
	return l, nil
}

// attachedLease is the lease a session's requests run on now (nil: none).
// Cancel requests, shutdown and /v1/clients read it from other
// goroutines; a cancel compares what it read with what is there when its
// connection to the server is open, and interface values holding the same
// *pool.Lease compare equal, a later lease of the same connection does not.
//
// It also keeps a cancel from reaching another client's query. The server
// acts on a CancelRequest by signalling the backend before it closes the
// cancel connection, and a backend that gets the signal while it waits
// for its next command ignores it. So a backend whose client has let it
// go must not be lent again until every cancel sent to it has been
// delivered: beginCancel counts one (only if the lease is still the
// session's), endCancel uncounts it, and awaitCancels, called between
// letting go and releasing, waits for the count to drop to zero. A cancel
// the server did not confirm in time may still act later, on anyone: the
// backend is then closed instead of lent again.
type attachedLease struct {
	mu          sync.Mutex
	l           Lease
	cancelling  int           // cancels on their way to l's backend (or the last one's)
	delivered   chan struct{} // closed when cancelling drops to zero; nil if no one waits
	unconfirmed bool          // a cancel was sent that the server did not confirm
}

func (a *attachedLease) Load() Lease {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.l
}

func (a *attachedLease) Store(l Lease) {
	a.mu.Lock()
	a.l = l
	a.mu.Unlock()
}

// beginCancel reports whether l is still the attached lease, and if so
// counts a cancel on its way to its backend until endCancel.
func (a *attachedLease) beginCancel(l Lease) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.l != l || l == nil {
		return false
	}
	a.cancelling++
	return true
}

// endCancel ends what beginCancel counted; confirmed is false for a
// cancel that was sent but not confirmed.
func (a *attachedLease) endCancel(confirmed bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.unconfirmed = a.unconfirmed || !confirmed
	a.cancelling--
	if a.cancelling == 0 && a.delivered != nil {
		close(a.delivered)
		a.delivered = nil
	}
}

// awaitCancels waits until no cancel is on its way to the backend the
// session just let go of, and reports whether that backend may be lent
// again (false: a cancel to it was not confirmed; close it). The wait is
// bounded by the cancels' own timeouts, and is nearly always none.
func (a *attachedLease) awaitCancels() (reusable bool) {
	a.mu.Lock()
	if a.cancelling > 0 {
		if a.delivered == nil {
			a.delivered = make(chan struct{})
		}
		ch := a.delivered
		a.mu.Unlock()
		<-ch
		a.mu.Lock()
	}
	reusable, a.unconfirmed = !a.unconfirmed, false
	a.mu.Unlock()
	return reusable
}
