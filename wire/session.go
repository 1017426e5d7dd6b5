package wire

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/querycop/querycop/internal/reasons"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/pool"
)

// maxPasswordLen bounds the password message, as PostgreSQL's
// PG_MAX_AUTH_TOKEN_LENGTH does.
const maxPasswordLen = 65535

// relayBufSize is the read size of the relay in each direction.
const relayBufSize = 32 * 1024

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// session is one client connection, from accept to close.
type session struct {
	srv  *Server
	conn net.Conn
	// log is the session goroutine's own; other goroutines (shutdown,
	// cancel forwarding) use sharedLog, which setLog keeps in step.
	log       zerolog.Logger
	logShared atomic.Pointer[zerolog.Logger]
	since     time.Time
	key       cancelKey
	tls       bool
	tlsCert   *tls.Certificate // served to the client, for SCRAM channel binding

	// connShared is conn for other goroutines (shutdown): start-up
	// replaces conn with its TLS layer.
	connShared atomic.Pointer[net.Conn]

	lease   atomic.Pointer[pool.Lease] // the attached backend, for cancel
	writeMu sync.Mutex                 // client writes: relay vs. kill
	killed  atomic.Bool

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
	cancelReq     bool      // a CancelRequest came during the wait
	forwarded     bool      // a request was forwarded to a backend once
	earlyCancel   time.Time // a CancelRequest that may have overtaken its request
	reqRead       bool      // a request was read and has no backend yet
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
	ss.setLog(ss.log.With().Str("user", params.User).Str("db", params.Database).Logger())
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
	pl, err := ss.srv.pools.Admit(ss.srv.ctx, params)
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
		if errors.As(err, &se) {
			ss.failSettings(se)
		} else {
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
func (ss *session) afterStartup(pl *pool.Pool, settings []startupSetting) {
	first, err := ss.awaitFirst(make([]byte, 64))
	ss.finish(pl, settings, first, err)
}

// finish serves the session once the client has spoken, and cleans up.
func (ss *session) finish(pl *pool.Pool, settings []startupSetting, first []byte, readErr error) {
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

// refuse tells the client why it gets no backend, and logs it once.
func (ss *session) refuse(err error) {
	resp, reason := backendErrorResponse(err)
	ss.srv.uncount(ss)
	ss.srv.counters.refuse(reason)
	ev := ss.log.Warn()
	if reason == reasons.BackendRefused || reason == reasons.AcquireTimeout {
		ev = ss.log.Info()
	}
	ev = ss.refusalEvent(ev, reason)
	ev.Str("reason", string(reason)).Str("error", err.Error()).Msg("client refused: no backend connection")
	ss.send(resp)
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

// attach takes a backend for the session and relays until it ends.
func (ss *session) attach(pl *pool.Pool, settings []startupSetting, first []byte) reasons.Reason {
	for {
		reason, cancelled := ss.attachOnce(pl, settings, first)
		if !cancelled {
			return reason
		}
		// The request was cancelled before it reached a backend, and
		// answered so; the session goes on without one.
		rest, reason := ss.skipCancelled(first)
		if reason != "" {
			return reason
		}
		if len(rest) == 0 {
			var err error
			if rest, err = ss.awaitFirst(make([]byte, 64)); len(rest) == 0 {
				return ss.firstReadFailed(err)
			}
		}
		first = rest
	}
}

// attachOnce takes a backend for the request in first and relays until
// the session ends; cancelled reports a CancelRequest that came before the
// request reached the backend (nothing was sent).
func (ss *session) attachOnce(pl *pool.Pool, settings []startupSetting, first []byte) (reason reasons.Reason, cancelled bool) {
	ctx := ss.waitForBackend()
	lease, err := pl.Acquire(ctx)
	if err != nil {
		if ss.backendReady(nil) {
			return "", true
		}
		if ss.killed.Load() {
			return reasons.Shutdown, false
		}
		ss.refuse(err)
		return reasonOf(err), false
	}
	back := lease.Conn()
	ss.setLog(ss.log.With().Uint32("backend_pid", back.PID()).Logger())
	if q := setQuery(settings); q != "" {
		ctx, cancel := context.WithTimeout(ss.srv.ctx, 10*time.Second)
		_, err := back.Exec(ctx, q)
		cancel()
		if err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) {
				// As PostgreSQL would have refused the start-up packet.
				resp := fromPgError(pgErr)
				resp.Severity, resp.SeverityUnlocalized = "FATAL", "FATAL"
				ss.backendReady(nil)
				ss.send(resp)
				lease.Release(pool.ReleaseState{Clean: true, TxStatus: 'I'})
				return reasons.BadStartup, false
			}
			ss.backendReady(nil)
			lease.Release(pool.ReleaseState{Broken: true})
			ss.send(fatal(codeConnectionFailure, "backend connection failed while applying start-up parameters"))
			return reasons.BackendGone, false
		}
	}
	if ss.backendReady(lease) {
		// Cancelled while the backend was being made ready: the request
		// was never sent, and the backend goes back as it is.
		lease.Release(pool.ReleaseState{Clean: true, TxStatus: 'I'})
		return "", true
	}
	ss.log.Info().Bool("tls", ss.tls).Bool("backend_tls", back.TLS()).Msg("client attached")
	reason, state := ss.relay(back.NetConn(), first)
	ss.lease.Store(nil)
	lease.Release(state)
	return reason, false
}

// startup reads start-up packets until a StartupMessage, answering SSL and
// GSS encryption requests on the way. It returns nil after a CancelRequest.
func (ss *session) startup() (*startupMessage, error) {
	// As PostgreSQL's ProcessStartupPacket: one SSLRequest and one
	// GSSENCRequest at most, and neither inside TLS; a repeat is treated as
	// the unknown protocol version it then is.
	sslDone, gssDone := false, false
	for first := true; ; first = false {
		pkt, err := readStartupPacket(ss.conn)
		if err != nil {
			if first && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
				return nil, errProbe
			}
			return nil, err
		}
		switch {
		case pkt.code == codeSSLRequest && !sslDone:
			if len(pkt.body) != 0 {
				return nil, protocolErrorf("invalid length of startup packet")
			}
			sslDone = true
			if ss.srv.tls == nil {
				if _, err := ss.conn.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				continue
			}
			if _, err := ss.conn.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			tc := tls.Server(ss.conn, ss.srv.tls)
			if err := ss.tlsHandshake(tc); err != nil {
				return nil, &tlsHandshakeError{err}
			}
			ss.conn = tc
			shared := net.Conn(tc)
			ss.connShared.Store(&shared)
			ss.tls = true
			gssDone = true
		case pkt.code == codeGSSENCRequest && !gssDone:
			if len(pkt.body) != 0 {
				return nil, protocolErrorf("invalid length of startup packet")
			}
			// No GSSAPI encryption; the client goes on in plaintext or TLS.
			gssDone = true
			if _, err := ss.conn.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case pkt.code == codeCancelRequest:
			ss.forwardCancel(pkt.body)
			return nil, nil
		case pkt.code>>16 == 3:
			return parseStartupMessage(pkt.code, pkt.body)
		default:
			return nil, &unsupportedProtocolError{major: pkt.code >> 16, minor: pkt.code & 0xffff}
		}
	}
}

type tlsHandshakeError struct{ err error }

func (e *tlsHandshakeError) Error() string { return "client TLS handshake failed: " + e.err.Error() }

type unsupportedProtocolError struct{ major, minor uint32 }

func (e *unsupportedProtocolError) Error() string {
	return fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0 to 3.0", e.major, e.minor)
}

// admit checks the start-up parameters and answers protocol negotiation.
func (ss *session) admit(msg *startupMessage) (backend.Params, []startupSetting, error) {
	// As PostgreSQL does, before the names key anything (pools, logs,
	// metrics): truncated to NAMEDATALEN-1 bytes.
	user := truncateName(msg.params["user"])
	if user == "" {
		return backend.Params{}, nil, &clientError{fatal(codeInvalidAuthorization, "no PostgreSQL user name specified in startup packet"), reasons.BadStartup}
	}
	settings, err := clientSettings(msg.params)
	if err != nil {
		return backend.Params{}, nil, &clientError{fatal(codeFeatureNotSupported, err.Error()), reasons.BadStartup}
	}
	db := truncateName(msg.params["database"])
	if db == "" {
		db = user
	}
	// PostgreSQL answers a newer minor version, or protocol options it does
	// not know, with NegotiateProtocolVersion and goes on with 3.0. Despite
	// the field's documented name it sends the whole version number
	// (PG_PROTOCOL_LATEST, 196608 for 3.0), and libpq 18 and pgjdbc read it
	// so.
	if msg.minor > 0 || len(msg.pqOptions) > 0 {
		buf, err := (&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: protocol30, UnrecognizedOptions: msg.pqOptions}).Encode(nil)
		if err != nil {
			return backend.Params{}, nil, err
		}
		if _, err := ss.conn.Write(buf); err != nil {
			return backend.Params{}, nil, err
		}
	}
	return backend.Params{User: user, Database: db}, settings, nil
}

// clientError is a refusal with its own ErrorResponse and close reason.
type clientError struct {
	resp   *pgproto3.ErrorResponse
	reason reasons.Reason
}

func (e *clientError) Error() string { return e.resp.Message }

// authenticate checks the client. Against a verifier the gateway holds
// (GATEKEEPER_CLIENT_AUTH_FILE, GATEKEEPER_AUTH_QUERY) it runs SCRAM or MD5
// itself: see authenticateKnown. Otherwise, in pass-through mode, it asks
// for the password, which is the backend credential; in token mode it asks
// for nothing: a password would protect nothing (it would be dropped), and
// libpq refuses to send an empty one, so asking only made users invent one.
func (ss *session) authenticate(user string) (clientCredential, error) {
	if cred, handled, err := ss.authenticateKnown(user); handled {
		return cred, err
	}
	if ss.srv.tokenMode {
		return clientCredential{method: methodNone}, nil
	}
	buf, _ := (&pgproto3.AuthenticationCleartextPassword{}).Encode(nil)
	if _, err := ss.conn.Write(buf); err != nil {
		return clientCredential{}, err
	}
	typ, body, err := readMessage(ss.conn, maxPasswordLen)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return clientCredential{}, errClientGone
		}
		return clientCredential{}, err
	}
	if typ == 'X' {
		return clientCredential{}, errClientGone
	}
	if typ != 'p' {
		return clientCredential{}, protocolErrorf("expected password response, got message type %d", typ)
	}
	if len(body) == 0 || body[len(body)-1] != 0 {
		return clientCredential{}, protocolErrorf("invalid password packet")
	}
	return clientCredential{password: string(body[:len(body)-1]), method: methodCleartext}, nil
}

// failStartup answers a start-up failure where the protocol allows it and
// logs it once.
func (ss *session) failStartup(err error) {
	ss.srv.uncount(ss)
	var ce *clientError
	var pe *protocolError
	var upe *unsupportedProtocolError
	var te *tlsHandshakeError
	var ne net.Error
	switch {
	case errors.Is(err, errProbe):
		ss.srv.counters.probes.Add(1)
		ss.log.Debug().Msg("connection closed without a byte: a TCP probe")
	case errors.Is(err, errClientGone), errors.Is(err, io.EOF):
		ss.log.Debug().Str("reason", string(reasons.ClientGone)).Msg("client left during start-up")
	case errors.As(err, &ce):
		ss.srv.counters.refuse(ce.reason)
		ss.refusalEvent(ss.log.Info(), ce.reason).Str("reason", string(ce.reason)).Str("error", ce.Error()).Msg("client refused")
		ss.send(ce.resp)
	case errors.As(err, &pe):
		ss.srv.counters.refuse(reasons.ProtocolViolation)
		ss.refusalEvent(ss.log.Info(), reasons.ProtocolViolation).Str("reason", string(reasons.ProtocolViolation)).Str("error", pe.Error()).Msg("client refused")
		ss.send(fatal(codeProtocolViolation, pe.Error()))
	case errors.As(err, &upe):
		ss.srv.counters.refuse(reasons.ProtocolViolation)
		ss.refusalEvent(ss.log.Info(), reasons.ProtocolViolation).Str("reason", string(reasons.ProtocolViolation)).Str("error", upe.Error()).Msg("client refused")
		ss.send(fatal(codeFeatureNotSupported, upe.Error()))
	case errors.As(err, &te):
		// Nothing can be sent: the channel is neither plaintext nor TLS.
		ss.srv.counters.refuse(reasons.ClientTLS)
		ss.refusalEvent(ss.log.Info(), reasons.ClientTLS).Str("reason", string(reasons.ClientTLS)).Str("error", te.Error()).Msg("client refused")
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		ss.srv.counters.refuse(reasons.LoginTimeout)
		ss.refusalEvent(ss.log.Info(), reasons.LoginTimeout).Str("reason", string(reasons.LoginTimeout)).Msg("client refused")
		ss.send(fatal(codeProtocolViolation, "start-up not completed within GATEKEEPER_CLIENT_LOGIN_TIMEOUT ("+ss.srv.cfg.LoginTimeout.String()+")"))
	case errors.Is(err, io.ErrUnexpectedEOF):
		ss.srv.counters.refuse(reasons.ProtocolViolation)
		ss.refusalEvent(ss.log.Info(), reasons.ProtocolViolation).Str("reason", string(reasons.ProtocolViolation)).Msg("client sent an incomplete start-up packet")
	default:
		ss.log.Info().Str("reason", string(reasons.ClientGone)).Err(err).Msg("client start-up failed")
	}
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
	_, _ = ss.conn.Write(buf)
	// No deadline left behind for a later write of the same session.
	_ = ss.conn.SetWriteDeadline(time.Time{})
}

// handoff completes the client's start-up in one write: the parameters the
// server reports for this pool, with the client's own start-up values in
// place (they are applied when a backend is attached), and the gateway's
// own cancel key.
func (ss *session) handoff(server map[string]string, settings []startupSetting) error {
	reported := maps.Clone(server)
	for _, st := range settings {
		for name := range reported {
			if strings.EqualFold(name, st.name) {
				reported[name] = st.value
			}
		}
	}
	buf, _ := (&pgproto3.AuthenticationOk{}).Encode(nil)
	for _, name := range slices.Sorted(maps.Keys(reported)) {
		buf, _ = (&pgproto3.ParameterStatus{Name: name, Value: reported[name]}).Encode(buf)
	}
	var secret [4]byte
	binary.BigEndian.PutUint32(secret[:], ss.key.secret)
	buf, _ = (&pgproto3.BackendKeyData{ProcessID: ss.key.pid, SecretKey: secret[:]}).Encode(buf)
	buf, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(buf)
	ss.writeMu.Lock()
	defer ss.writeMu.Unlock()
	_, err := ss.conn.Write(buf)
	return err
}

// forwardCancel passes a CancelRequest bearing one of our keys to the
// backend that session is using. Unknown keys are ignored, as PostgreSQL
// does, so a guesser learns nothing.
func (ss *session) forwardCancel(body []byte) {
	if len(body) != 8 {
		ss.log.Debug().Msg("cancel request with an unknown key format ignored")
		return
	}
	key := cancelKey{pid: binary.BigEndian.Uint32(body[:4]), secret: binary.BigEndian.Uint32(body[4:])}
	target := ss.srv.lookup(key)
	if target == nil {
		ss.log.Debug().Msg("cancel request for an unknown key ignored")
		return
	}
	if target.cancelWaiting() {
		target.sharedLog().Info().Msg("cancel request: the request waiting for a backend is cancelled, never sent")
		return
	}
	lease := target.lease.Load()
	if lease == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ss.srv.ctx, 10*time.Second)
	defer cancel()
	// In transaction mode the backend goes back to the pool when the
	// transaction ends; by the time the cancel connection is open it may
	// be running another client's query, which must not be cancelled.
	sent, err := lease.Conn().CancelIf(ctx, func() bool { return target.lease.Load() == lease })
	switch {
	case err != nil:
		target.sharedLog().Warn().Err(err).Msg("forwarding cancel request failed")
	case !sent:
		target.sharedLog().Debug().Msg("cancel request not forwarded: the client no longer holds that backend")
	default:
		target.sharedLog().Info().Msg("cancel request forwarded")
	}
}

// setLog replaces the session's logger, for its own goroutine and for
// the others.
func (ss *session) setLog(l zerolog.Logger) {
	ss.log = l
	ss.logShared.Store(&l)
}

// sharedLog is the session's logger for goroutines other than its own.
func (ss *session) sharedLog() *zerolog.Logger {
	if l := ss.logShared.Load(); l != nil {
		return l
	}
	return &ss.srv.log
}

// remoteIP is the client's address without its port, for per-address limits.
func remoteIP(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}
