package wire

import (
	"context"
	"crypto/sha256"
	"errors"
	"sync"
	"time"

	"github.com/querycop/querycop/internal/reasons"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/pool"
)

// A client's start-up parameters are applied when it gets a backend, which
// in PostgreSQL terms is after its start-up: an unknown parameter
// (DOESNOTEXIST=foo, options='-c nosuch=1') or a value the server refuses
// (work_mem=banana) would pass the connect and break the first query, so
// a client library's connection validation accepts the connection. As
// PostgreSQL does, the gateway fails such a connection at connect with the
// server's own error: the settings are tried on a backend of the pool with
// set_config(..., is_local => true) in a statement of their own, which
// checks names (a dotted placeholder name is accepted, as at start-up),
// values and the user's right to set them, and leaves nothing behind. A
// set of settings that passed is remembered per pool, so this costs a
// round trip only the first time.

// maxCheckedSettings bounds the memory of settings that passed.
const maxCheckedSettings = 10000

type checkedKey struct {
	pool Pool
	sum  [sha256.Size]byte
}

type settingsChecks struct {
	mu   sync.Mutex
	seen map[checkedKey]struct{}
}

func (c *settingsChecks) passed(k checkedKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.seen[k]
	return ok
}

func (c *settingsChecks) remember(k checkedKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil || len(c.seen) >= maxCheckedSettings {
		c.seen = map[checkedKey]struct{}{}
	}
	c.seen[k] = struct{}{}
}

// checkQuery tries every setting for the current statement only.
func checkQuery(settings []startupSetting) string { return setConfigQuery(settings, true) }

// checkSettings returns a *settingsError for settings the server refuses,
// or the error that kept it from asking.
func (ss *session) checkSettings(pl Pool, settings []startupSetting) error {
	if len(settings) == 0 {
		return nil
	}
	q := checkQuery(settings)
	key := checkedKey{pool: pl, sum: sha256.Sum256([]byte(q))}
	if ss.srv.settingsChecks.passed(key) {
		return nil
	}
	wait := ss.newLoginWait()
	defer wait.end()
	lease, err := pl.Acquire(wait.ctx)
	if wait.left {
		if lease != nil {
			lease.Release(pool.ReleaseState{Clean: true, TxStatus: 'I', KeepState: true})
		}
		return errClientLeft
	}
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ss.srv.ctx, 10*time.Second)
	_, err = lease.Conn().Exec(ctx, q)
	cancel()
	var pgErr *pgconn.PgError
	switch {
	case err == nil:
		lease.Release(pool.ReleaseState{Clean: true, TxStatus: 'I', KeepState: true})
		ss.srv.settingsChecks.remember(key)
		return nil
	case errors.As(err, &pgErr):
		lease.Release(pool.ReleaseState{Clean: true, TxStatus: 'I', KeepState: true})
		return &settingsError{pgErr}
	default:
		lease.Release(pool.ReleaseState{Broken: true})
		return err
	}
}

// failSettings refuses a client whose start-up parameters the server
// refused, as PostgreSQL does: authentication succeeded, then the FATAL.
func (ss *session) failSettings(se *settingsError) {
	resp := fromPgError(se.err)
	resp.Severity, resp.SeverityUnlocalized = "FATAL", "FATAL"
	buf, _ := (&pgproto3.AuthenticationOk{}).Encode(nil)
	buf, _ = resp.Encode(buf)
	ss.srv.uncount(ss)
	ss.srv.counters.refuse(reasons.BadStartup)
	ss.refusalEvent(ss.log.Info(), reasons.BadStartup).Str("reason", string(reasons.BadStartup)).Str("error", clip(resp.Message)).Msg("client refused")
	ss.writeMu.Lock()
	defer ss.writeMu.Unlock()
	_ = ss.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = ss.conn.Write(ss.withAuthFinal(buf))
}
