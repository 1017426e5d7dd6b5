package wire

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/internal/reasons"
)

// A session's life, in the order run and finish take it: start-up packets
// and TLS (startup.go, clienttls.go), client authentication (clientauth.go
// with authfile.go, authquery.go, scram.go), admission to the key's pool,
// the handoff (handoff.go) and its cancel key (cancel.go); then, on a
// goroutine of its own, the relay in session mode (attach.go, relay.go)
// or transaction mode (tx*.go), and release. Refusals on the way are in
// refusal.go.

// session is one client connection, from accept to close.
type session struct {
	srv  *Server
	conn net.Conn
	// log is set before the session is visible to other goroutines and
	// never replaced, so shutdown and cancel forwarding use it too. The
	// session's fields go on each line through logFields.
	log     zerolog.Logger
	logf    logFields
	since   time.Time
	key     cancelKey
	tls     bool
	tlsCert *tls.Certificate // served to the client, for SCRAM channel binding

	// connShared is conn for other goroutines (shutdown): start-up
	// replaces conn with its TLS layer.
	connShared atomic.Pointer[net.Conn]

	lease   attachedLease // the attached backend, for cancel
	writeMu sync.Mutex    // client writes: relay vs. kill
	// authFinal is the SCRAM exchange's last message, held back (under
	// writeMu) to go out with what follows it: see withAuthFinal.
	authFinal []byte
	killMu    sync.Mutex // held through kill, so a second caller waits for the first
	killed    atomic.Bool

	// Shutdown (see shutdown.go): gateMu orders the client side's "forward
	// this request" against shutdown's "close now, between requests".
	draining   atomic.Bool
	gateMu     sync.Mutex
	gateClosed bool // nothing more is forwarded (gateMu)
	midBatch   bool // session mode: extended protocol before its Sync (gateMu)
	txBusy     bool // transaction mode: a backend is attached or being attached (gateMu)

	// A request waiting for a backend (see cancelwait.go), under gateMu.
	waitCancel context.CancelFunc // ends the wait; nil when not waiting
	// The context of the waits, reused until a cancel ends it.
	waitCtx       context.Context
	waitCtxCancel context.CancelFunc
	cancelReq     bool        // a CancelRequest came during the wait
	hadRequest    bool        // a request was forwarded to a backend, or answered as cancelled
	earlyCancel   time.Time   // a CancelRequest that may have overtaken its request
	reqRead       bool        // a request was read and has no backend yet
	checkLeftFn   func()      // checkLeft, bound once for the pool's wait checks
	clientLeft    atomic.Bool // checkLeft found the client gone (any goroutine)
	// readFirst's (client goroutine only): conn's RawConn, its callback
	// bound once, and the read it makes.
	rawConn     syscall.RawConn
	firstReadFn func(fd uintptr) bool
	firstBuf    []byte
	firstN      int
	firstErrno  syscall.Errno

	overLimit bool        // beyond GATEKEEPER_MAX_CLIENT_CONN: refused after start-up
	uncounted atomic.Bool // out of Server.clients (uncount)

	// For the idle timeouts: the last ReadyForQuery status of the attached
	// backend, the requests not yet answered, and when the armed idle
	// deadline falls (unix ns, 0 when none).
	txStatus    atomic.Uint32
	outstanding atomic.Int64
	idleUntil   atomic.Int64
	idleMu      sync.Mutex // orders armIdle's check and deadline between the two sides
	readsEnded  bool       // endClientReads was called (idleMu)

	rc relayCounters

	infoMu sync.Mutex
	view   ClientInfo // for the admin API; guarded by infoMu
}

func (ss *session) setView(update func(*ClientInfo)) {
	ss.infoMu.Lock()
	update(&ss.view)
	ss.infoMu.Unlock()
}

// errProbe is a connection closed before its first byte: a TCP health
// check (a Kubernetes tcpSocket probe, a load balancer), not a client.
var errProbe = errors.New("connection closed without sending a byte")

// errClientGone is a client that left during start-up without a word; psql
// does this on purpose when it learns it must prompt for a password.
var errClientGone = errors.New("client closed the connection")

// run is the start-up of a session. Once the client is handed its
// ReadyForQuery, the rest of the session continues on a new goroutine and
// this one ends: start-up grows a goroutine's stack (TLS, SCRAM, logging),
// and an idle client should cost only the small stack of a blocked read.
func (ss *session) run() {
	handedOver := false
	defer func() {
		if !handedOver {
			ss.conn.Close()
			ss.srv.forget(ss)
		}
	}()
	ss.log.Debug().Msg("client accepted")

	_ = ss.conn.SetDeadline(time.Now().Add(ss.srv.cfg.LoginTimeout))
	msg, err := ss.startup()
	if err != nil {
		ss.failStartup(err)
		return
	}
	if msg == nil { // a cancel request, already handled
		return
	}
	if ss.overLimit {
		ss.failStartup(&clientError{fatal(codeTooManyConnections, fmt.Sprintf(
			"too many clients: GATEKEEPER_MAX_CLIENT_CONN (%d) reached", ss.srv.cfg.MaxClientConn)), reasons.MaxClients})
		return
	}
	params, settings, err := ss.admit(msg)
	if err != nil {
		ss.failStartup(err)
		return
	}
	ss.logf.ident.Store(&logIdent{user: params.User, db: params.Database})
	ss.setView(func(v *ClientInfo) { v.User, v.Database, v.TLS = params.User, params.Database, ss.tls })
	if ss.srv.cfg.ClientTLS == ClientTLSRequire && !ss.tls {
		ss.failStartup(&clientError{fatal(codeInvalidAuthorization,
			"querycop requires TLS from clients (GATEKEEPER_CLIENT_TLS=require); connect with sslmode=require or stronger"), reasons.ClientTLSRequired})
		return
	}
	if ss.srv.failures.blocked(remoteIP(ss.conn)) {
		ss.failStartup(&clientError{fatal(codeInvalidAuthorization,
			"too many failed logins from this address; try again in a minute"), reasons.LoginRateLimited})
		return
	}
	if ss.srv.console != nil && ss.srv.console.IsConsole(params.Database) {
		ss.runConsole(params)
		return
	}
	cred, err := ss.authenticate(params.User)
	if err != nil {
		ss.failStartup(err)
		return
	}
	if !ss.srv.tokenMode {
		params.Password, params.SCRAM = cred.password, cred.scram
	}

	// The login timeout bounds the client's own part of start-up; waiting
	// for the pool (bounded by the acquire timeout) is not the client's.
	_ = ss.conn.SetDeadline(time.Time{})
	wait := ss.newLoginWait()
	pl, err := ss.srv.pools.Admit(wait.ctx, params)
	wait.end()
	if wait.left {
		if err == nil {
			pl.Leave()
		}
		ss.log.Info().Str("reason", string(reasons.ClientGone)).Msg("client closed while its login waited for a backend")
		return
	}
	if err != nil {
		ss.srv.verifierRefused(params.User, err)
		if loginRefused(err) {
			// The server refused the login: it counts toward the
			// per-address limit as a wrong password in the auth file does.
			ss.srv.failures.record(remoteIP(ss.conn))
		}
		ss.refuse(err)
		return
	}
	if err := ss.checkSettings(pl, settings); err != nil {
		pl.Leave()
		var se *settingsError
		switch {
		case errors.As(err, &se):
			ss.failSettings(se)
		case errors.Is(err, errClientLeft):
			ss.log.Info().Str("reason", string(reasons.ClientGone)).Msg("client closed while its login waited for a backend")
		default:
			ss.refuse(err)
		}
		return
	}
	ss.key = ss.srv.register(ss)
	if err := ss.handoff(pl.StartupParams(), settings); err != nil {
		pl.Leave()
		ss.log.Info().Str("reason", string(reasons.ClientGone)).Err(err).Msg("client closed during handoff")
		return
	}
	ss.srv.counters.login(cred.method)
	ss.log.Debug().Bool("tls", ss.tls).Str("method", cred.method).Msg("client authenticated")
	ss.setView(func(v *ClientInfo) { v.State = "idle" })

	handedOver = true
	ss.srv.sessions.Add(1)
	go ss.afterStartup(pl, settings)
}

// afterStartup is the rest of a session, on a goroutine of its own: an
// idle client spends its life in the read of awaitFirst, so this frame
// and that one are all its stack holds (start-up grew the first
// goroutine's stack with TLS, SCRAM and logging).
func (ss *session) afterStartup(pl Pool, settings []startupSetting) {
	first, err := ss.awaitFirst(make([]byte, 64))
	ss.finish(pl, settings, first, err)
}

// finish serves the session once the client has spoken, and cleans up.
func (ss *session) finish(pl Pool, settings []startupSetting, first []byte, readErr error) {
	defer ss.srv.sessions.Done()
	defer ss.endWaits()
	defer ss.srv.forget(ss)
	defer ss.conn.Close()
	defer pl.Leave()
	var reason reasons.Reason
	switch {
	case ss.srv.cfg.PoolMode == TransactionMode:
		reason = ss.serveTransactions(pl, settings, first, readErr)
	case len(first) == 0:
		reason = ss.firstReadFailed(readErr)
	case first[0] == 'X':
		reason = reasons.ClientClose
	default:
		reason = ss.attach(pl, settings, first)
	}
	ss.srv.counters.disconnect(reason)
	ss.log.Info().Str("reason", string(reason)).Dur("duration", time.Since(ss.since)).Msg("client closed")
}

// awaitFirst waits for the client's first bytes, read into buf, with the
// least stack: a connected client that says nothing holds no backend.
//
//go:noinline
func (ss *session) awaitFirst(buf []byte) ([]byte, error) {
	ss.armIdle()
	n, err, ok := readFirst(ss, buf)
	if !ok {
		n, err = ss.conn.Read(buf)
		if n > 0 {
			ss.requestRead()
		}
	}
	return buf[:n], err
}

// firstReadFailed names why a session ended before its first message.
func (ss *session) firstReadFailed(err error) reasons.Reason {
	switch {
	case ss.killed.Load():
		return reasons.Shutdown
	case ss.idleExpired():
		idle := ss.idleTimeoutError()
		ss.send(fatal(idle.code, idle.msg))
		return idle.reason
	case err != nil && !errors.Is(err, io.EOF):
		ss.log.Debug().Err(err).Msg("client read failed")
	}
	return reasons.ClientGone
}

// send writes one error to the client, best effort and bounded in time.
func (ss *session) send(resp *pgproto3.ErrorResponse) {
	buf, err := resp.Encode(nil)
	if err != nil {
		return
	}
	ss.writeMu.Lock()
	defer ss.writeMu.Unlock()
	_ = ss.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = ss.conn.Write(ss.withAuthFinal(buf))
	// No deadline left behind for a later write of the same session.
	_ = ss.conn.SetWriteDeadline(time.Time{})
}

// logFields are a session's fields on each of its log lines, added by a
// zerolog hook as a line is written. A prepared context (Logger.With)
// would cost every session a 500-byte buffer, a large share of an idle
// client's memory, for the few lifecycle lines a session writes. The
// fields set after start-up are atomic: other goroutines log for the
// session (shutdown, cancel forwarding).
type logFields struct {
	connID     uint64
	client     string
	ident      atomic.Pointer[logIdent]
	backendPID atomic.Uint32
}

type logIdent struct{ user, db string }

func (f *logFields) Run(e *zerolog.Event, _ zerolog.Level, _ string) {
	e.Uint64("conn_id", f.connID).Str("client", f.client)
	if id := f.ident.Load(); id != nil {
		e.Str("user", id.user).Str("db", id.db)
	}
	if pid := f.backendPID.Load(); pid != 0 {
		e.Uint32("backend_pid", pid)
	}
}

// remoteIP is the client's address without its port, for per-address limits.
func remoteIP(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// withAuthFinal puts the held-back last message of a SCRAM exchange in
// front of buf. PostgreSQL sends AuthenticationSASLFinal with what follows
// it (AuthenticationOk and the rest of start-up, or a FATAL) rather than
// on its own, which saves a write and a wake-up of the client per login;
// so does the gateway. Called with writeMu held.
func (ss *session) withAuthFinal(buf []byte) []byte {
	if ss.authFinal == nil {
		return buf
	}
	out := append(ss.authFinal, buf...)
	ss.authFinal = nil
	return out
}

// flushAuthFinal writes a held-back SCRAM final message on its own, for a
// session whose start-up ends elsewhere (the admin console).
func (ss *session) flushAuthFinal() error {
	ss.writeMu.Lock()
	defer ss.writeMu.Unlock()
	if ss.authFinal == nil {
		return nil
	}
	_, err := ss.conn.Write(ss.withAuthFinal(nil))
	return err
}
