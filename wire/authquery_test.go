package wire

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/backend"
)

// A lookup queued behind another for its whole timeout gives up with a
// clear error and touches neither the server nor the kept connection (a
// nil dialer would panic if it were used).
func TestAuthQueryQueuedLookupGivesUp(t *testing.T) {
	aq := newAuthQuery(Config{AuthUser: "qa", AuthDatabase: "postgres", AuthQuery: DefaultAuthQuery, LoginTimeout: 50 * time.Millisecond},
		nil, func() string { return "" }, zerolog.Nop())
	aq.connSem <- struct{}{} // another lookup is running
	res := aq.fetch("alice")
	if res.err == nil || !strings.Contains(res.err.Error(), "busy with other logins") {
		t.Fatalf("got %+v, want the busy error", res)
	}
	if res.err.(*clientError).resp.Code != codeCannotConnect {
		t.Errorf("SQLSTATE %s, want %s", res.err.(*clientError).resp.Code, codeCannotConnect)
	}
}

// The cache stays bounded however many names are tried, and answers age
// out: a failure after a second, the rest after the TTL.
func TestAuthQueryCacheBounds(t *testing.T) {
	aq := newAuthQuery(Config{AuthQueryCacheTTL: time.Minute}, nil, nil, zerolog.Nop())
	settled := func(res authQueryResult, at time.Time) *authQueryEntry {
		e := &authQueryEntry{ready: make(chan struct{}), res: res, at: at}
		close(e.ready)
		return e
	}
	for i := range authQueryMaxEntries + 50 {
		aq.mu.Lock()
		aq.makeRoom()
		aq.entries[fmt.Sprint("ghost", i)] = settled(authQueryResult{}, time.Now())
		aq.mu.Unlock()
	}
	if n := len(aq.entries); n > authQueryMaxEntries {
		t.Errorf("%d cached answers, want at most %d", n, authQueryMaxEntries)
	}

	aq.mu.Lock()
	defer aq.mu.Unlock()
	pending := &authQueryEntry{ready: make(chan struct{})}
	for _, tt := range []struct {
		name  string
		e     *authQueryEntry
		fresh bool
	}{
		{"found, 30s old", settled(authQueryResult{found: true}, time.Now().Add(-30*time.Second)), true},
		{"not found, 30s old", settled(authQueryResult{}, time.Now().Add(-30*time.Second)), true},
		{"found, past the TTL", settled(authQueryResult{found: true}, time.Now().Add(-61*time.Second)), false},
		{"failed, 2s old", settled(authQueryResult{err: &clientError{fatal("28000", "x"), "r"}}, time.Now().Add(-2*time.Second)), false},
		{"failed just now", settled(authQueryResult{err: &clientError{fatal("28000", "x"), "r"}}, time.Now()), true},
		{"being fetched", pending, true},
	} {
		if got := aq.fresh(tt.e); got != tt.fresh {
			t.Errorf("%s: fresh = %v, want %v", tt.name, got, tt.fresh)
		}
	}
}

// A failed proof forgets a cached secret only if it is over a second old
// (wrong passwords must not become one query each); the server saying the
// secret changed forgets it at once; SIGHUP forgets all settled answers.
func TestAuthQueryInvalidate(t *testing.T) {
	aq := newAuthQuery(Config{AuthQueryCacheTTL: time.Minute}, nil, nil, zerolog.Nop())
	put := func(user string, age time.Duration) {
		e := &authQueryEntry{ready: make(chan struct{}), res: authQueryResult{found: true}, at: time.Now().Add(-age)}
		close(e.ready)
		aq.entries[user] = e
	}
	has := func(user string) bool { _, ok := aq.entries[user]; return ok }

	put("new", 0)
	aq.invalidate("new", false)
	if !has("new") {
		t.Error("a secret fetched just now was dropped on a failed proof")
	}
	aq.invalidate("new", true)
	if has("new") {
		t.Error("the server's word did not drop the secret")
	}
	put("old", 2*time.Second)
	aq.invalidate("old", false)
	if has("old") {
		t.Error("a failed proof did not drop a secret over a second old")
	}
	put("a", 0)
	aq.entries["pending"] = &authQueryEntry{ready: make(chan struct{})}
	aq.flush()
	if has("a") || !has("pending") {
		t.Errorf("flush: settled answers must go, lookups in flight stay: %v", aq.entries)
	}
}

// countingDialer fails every login, counting the attempts.
type countingDialer struct{ dials atomic.Int64 }

func (d *countingDialer) Dial(ctx context.Context, p backend.Params) (*backend.Conn, error) {
	d.dials.Add(1)
	return nil, &pgconn.PgError{Severity: "FATAL", Code: "28P01", Message: `password authentication failed for user "qa"`}
}

// A wrong GATEKEEPER_AUTH_PASSWORD under a flood of made-up names costs one
// failed login of the auth role per backoff, not one per name; SIGHUP's
// flush lets the next lookup try again at once.
func TestAuthQueryLoginBackoff(t *testing.T) {
	d := &countingDialer{}
	aq := newAuthQuery(Config{AuthUser: "qa", AuthDatabase: "postgres", AuthQuery: DefaultAuthQuery, LoginTimeout: time.Second},
		d, func() string { return "wrong" }, zerolog.Nop())
	for i := 0; i < 50; i++ {
		res := aq.lookup(context.Background(), fmt.Sprintf("made-up-%d", i))
		if res.err == nil || !strings.Contains(res.err.Error(), "cannot log in") {
			t.Fatalf("lookup %d: %+v, want the auth role's login failure", i, res)
		}
	}
	if n := d.dials.Load(); n != 1 {
		t.Errorf("50 names cost %d logins of the auth role, want 1 within the backoff", n)
	}
	aq.flush()
	aq.lookup(context.Background(), "after-sighup")
	if n := d.dials.Load(); n != 2 {
		t.Errorf("after a flush, %d logins in all, want 2", n)
	}
}
