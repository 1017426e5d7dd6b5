package pool

import (
	"context"
	"time"
)

// A client that leaves while its request waits for a connection must not
// have that request run once one frees: PgBouncer drops such a client from
// its queue at once, and on a direct connection the request would have
// been refused with the connection. The pool cannot see the client, so the
// caller hands Acquire a check through the context, called while the
// caller waits and never on the fast path.

// waitCheckEvery is how often a waiting Acquire calls the caller's check.
// It checks once more when the wait ends, so this bounds only how long a
// departed client keeps its place in the queue.
const waitCheckEvery = 100 * time.Millisecond

type waitCheckKey struct{}

// WithWaitCheck returns ctx carrying check, which Acquire calls when it
// cannot take a connection at once: every waitCheckEvery while it waits
// for a full or paused pool, once when that wait ends, and between its
// retries. check ends the wait by ending ctx (e.g. when the client the
// wait is for has gone); Acquire then returns ctx's error. An Acquire that
// finds a connection at once never calls it.
func WithWaitCheck(ctx context.Context, check func()) context.Context {
	return context.WithValue(ctx, waitCheckKey{}, check)
}

// waitCheckOf is the check WithWaitCheck put in ctx, or nil.
func waitCheckOf(ctx context.Context) func() {
	check, _ := ctx.Value(waitCheckKey{}).(func())
	return check
}

// runWaitCheck calls ctx's check, if it has one.
func runWaitCheck(ctx context.Context) {
	if check := waitCheckOf(ctx); check != nil {
		check()
	}
}
