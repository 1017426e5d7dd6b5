package pool

import (
	"context"
	"sync"
	"time"
)

// limiter bounds the connections a pool hands out. puddle's own MaxSize is
// fixed at creation, so the pool's size, which the admin API can change at
// run time, is enforced here; puddle's is only a ceiling never reached.
// Waiters are served first come, first served.
type limiter struct {
	mu      sync.Mutex
	size    int
	held    int
	paused  bool
	waiters []waiter // first come, first served: waiters[0] waited longest
}

// waiter is a client waiting for a slot, since when (for SHOW POOLS's
// maxwait; read only on the slow path, where a client waits anyway).
type waiter struct {
	ready chan struct{}
	since time.Time
}

// tryAcquire takes a slot if one is free now, without waiting.
func (l *limiter) tryAcquire() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.paused && l.held < l.size && len(l.waiters) == 0 {
		l.held++
		return true
	}
	return false
}

// acquire waits until a slot is free and the pool is not paused, or ctx
// ends.
func (l *limiter) acquire(ctx context.Context) error {
	l.mu.Lock()
	if !l.paused && l.held < l.size && len(l.waiters) == 0 {
		l.held++
		l.mu.Unlock()
		return nil
	}
	ready := make(chan struct{})
	l.waiters = append(l.waiters, waiter{ready: ready, since: time.Now()})
	l.mu.Unlock()
	var tick <-chan time.Time
	if check := waitCheckOf(ctx); check != nil {
		t := time.NewTicker(waitCheckEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ready:
			return nil
		case <-tick:
			runWaitCheck(ctx) // may end ctx: the next round sees it
		case <-ctx.Done():
			l.mu.Lock()
			defer l.mu.Unlock()
			for i, w := range l.waiters {
				if w.ready == ready {
					l.waiters = append(l.waiters[:i], l.waiters[i+1:]...)
					return ctx.Err()
				}
			}
			// Granted just as ctx ended: hand the slot on.
			l.held--
			l.wakeLocked()
			return ctx.Err()
		}
	}
}

func (l *limiter) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.held--
	l.wakeLocked()
}

func (l *limiter) wakeLocked() {
	for !l.paused && l.held < l.size && len(l.waiters) > 0 {
		w := l.waiters[0]
		l.waiters = l.waiters[1:]
		l.held++
		close(w.ready)
	}
}

func (l *limiter) resize(size int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.size = size
	l.wakeLocked()
}

func (l *limiter) setPaused(paused bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.paused = paused
	l.wakeLocked()
}

func (l *limiter) snapshot() (size, held, waiting int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size, l.held, len(l.waiters)
}

// oldestWait is how long the longest-waiting client has waited so far; 0
// when nobody waits.
func (l *limiter) oldestWait(now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.waiters) == 0 {
		return 0
	}
	return now.Sub(l.waiters[0].since)
}
