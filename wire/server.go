package wire

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/querycop/querycop/internal/sockio"
)

// Server accepts clients on the pool port and runs one session per client.
type Server struct {
	cfg       Config
	log       zerolog.Logger
	tls       *tls.Config // nil: clients asking for TLS get 'N'
	pools     Pools
	tokenMode bool
	console   Console // nil: no admin console (console.go)

	ln       net.Listener
	ctx      context.Context // cancelled by Close: ends every session
	cancel   context.CancelFunc
	sessions sync.WaitGroup
	// acceptMu orders Serve's sessions.Add against Shutdown's Wait: a
	// client accepted just as the listener closed is either counted
	// before the Wait starts or not served.
	acceptMu      sync.Mutex
	stopAccepting bool

	mu       sync.Mutex
	byKey    map[cancelKey]*session
	live     map[*session]struct{}
	nextID   atomic.Uint64
	clients  atomic.Int64
	counters serverCounters
	// pinnedNow counts transaction-mode clients pinned to their backend.
	pinnedNow atomic.Int64
	// stmtKey keys the names of statements transaction mode prepares.
	stmtKey []byte

	auth      *authFile     // nil: the client's password is not checked here
	authQuery *authQuery    // nil: no GATEKEEPER_AUTH_USER
	dialer    BackendDialer // for the auth query
	failures  loginFailures
	refusals  refusalLog

	settingsChecks settingsChecks // start-up settings the server accepted, per pool
	decoySecret    [32]byte       // salts the SCRAM exchange of users not in auth
}

// NewServer prepares a server; cfg must have passed Validate. In token mode
// the client's password is read and discarded.
func NewServer(cfg Config, pools Pools, tokenMode bool, log zerolog.Logger, opts ...Option) (*Server, error) {
	s := &Server{cfg: cfg, log: log, pools: pools, tokenMode: tokenMode, stmtKey: newStmtNameKey(),
		byKey: map[cancelKey]*session{}, live: map[*session]struct{}{}}
	for _, o := range opts {
		o(s)
	}
	if cfg.TLSCert != "" {
		certs, err := newCertReloader(cfg.TLSCert, cfg.TLSKey, log)
		if err != nil {
			return nil, fmt.Errorf("loading GATEKEEPER_PROXY_TLS_CERT and GATEKEEPER_PROXY_TLS_KEY: %w", err)
		}
		s.tls = &tls.Config{GetCertificate: recordServed(certs.getCertificate), MinVersion: tls.VersionTLS12}
		if cfg.TLSClientCA != "" {
			pem, err := os.ReadFile(cfg.TLSClientCA)
			if err != nil {
				return nil, fmt.Errorf("reading GATEKEEPER_PROXY_TLS_CLIENT_CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("GATEKEEPER_PROXY_TLS_CLIENT_CA holds no PEM certificate")
			}
			s.tls.ClientCAs = pool
			s.tls.ClientAuth = tls.VerifyClientCertIfGiven
		}
	}
	_, _ = rand.Read(s.decoySecret[:])
	if cfg.ClientAuthFile != "" {
		af, err := cfg.clientAuthFile()
		if err != nil {
			return nil, fmt.Errorf("reading GATEKEEPER_CLIENT_AUTH_FILE: %w", err)
		}
		af.onReload = func(users int) {
			log.Info().Int("users", users).Msg("GATEKEEPER_CLIENT_AUTH_FILE changed on disk: reloaded")
		}
		s.auth = af
	}
	if err := s.setUpAuthQuery(); err != nil {
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// ReloadAuthFile re-reads GATEKEEPER_CLIENT_AUTH_FILE (on SIGHUP); on
// failure the previous contents stay in force.
func (s *Server) ReloadAuthFile() error {
	if s.authQuery != nil {
		// And the auth query's answers: after a password change, SIGHUP
		// makes every user's next login read the new secret.
		s.authQuery.flush()
	}
	if s.auth == nil {
		return nil
	}
	return s.auth.reload()
}

// Listen opens the pool port. A port of 0 picks a free one (tests).
func (s *Server) Listen() error {
	addr := net.JoinHostPort(s.cfg.ListenAddr, strconv.Itoa(s.cfg.ListenPort))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	s.ln = ln
	return nil
}

// Addr is the address the pool port listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts clients until the listener is closed. It returns nil after
// Close or Shutdown.
func (s *Server) Serve() error {
	summaries := make(chan struct{})
	defer close(summaries)
	go s.logRefusalSummaries(summaries)
	var backoff time.Duration
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of file descriptors and the like: back off instead of
			// spinning, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn().Err(err).Dur("retry_in", backoff).Msg("accept failed")
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.acceptMu.Lock()
		if s.stopAccepting {
			s.acceptMu.Unlock()
			conn.Close()
			return nil
		}
		s.sessions.Add(1)
		s.acceptMu.Unlock()
		// Go's accepted TCP connections already have TCP_NODELAY and
		// keep-alives on (net.Listen's defaults): setting them again cost
		// two system calls per client.
		ss := s.newSession(sockio.Wrap(conn))
		go func() {
			defer s.sessions.Done()
			ss.run()
		}()
	}
}

// Shutdown stops accepting clients and waits for running sessions to end
// until ctx is done; then each session is closed with a FATAL 57P01 once it
// is between requests, and after ShutdownAnswerWait whatever it is doing
// (see shutdown.go). It returns at most ShutdownBound after ctx is done.
func (s *Server) Shutdown(ctx context.Context) error {
	defer s.closeAuthQuery()
	s.acceptMu.Lock()
	s.stopAccepting = true
	s.acceptMu.Unlock()
	if s.ln != nil {
		s.ln.Close()
	}
	done := make(chan struct{})
	go func() {
		s.sessions.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	answerWait := ShutdownAnswerWait
	if ctx.Err() == context.Canceled {
		answerWait = 0 // Close: no grace
	}
	if answerWait > 0 {
		// Each in a goroutine: a drain or close waits up to
		// shutdownWriteWait on a client that does not read, and one such
		// client must not hold up the others (nor many of them add up).
		for _, ss := range s.snapshot() {
			go ss.drain()
		}
		t := time.NewTimer(answerWait)
		select {
		case <-done:
			t.Stop()
			s.cancel()
			return nil
		case <-t.C:
		}
	}
	// Sessions that started after the snapshot are in the next one.
	for _, ss := range s.snapshot() {
		go ss.forceClose()
	}
	s.cancel()
	t := time.NewTimer(shutdownWriteWait + shutdownExitWait)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		n := len(s.snapshot())
		s.log.Warn().Int("sessions", n).Msg("shutdown: sessions still running after being closed; not waiting for them")
		return fmt.Errorf("shutdown: %d sessions did not end", n)
	}
}

// Close stops accepting and ends every session at once.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return s.Shutdown(ctx)
}

func (s *Server) newSession(conn net.Conn) *session {
	id := s.nextID.Add(1)
	ss := &session{
		srv:   s,
		conn:  conn,
		since: time.Now(),
		view:  ClientInfo{ID: id, Address: conn.RemoteAddr().String(), State: "login", ConnectedSince: time.Now()},
	}
	c := conn
	ss.connShared.Store(&c)
	ss.logf.connID, ss.logf.client = id, ss.view.Address
	ss.log = s.log.Hook(&ss.logf)
	s.mu.Lock()
	s.live[ss] = struct{}{}
	s.mu.Unlock()
	ss.overLimit = s.clients.Add(1) > int64(s.cfg.MaxClientConn)
	return ss
}

// uncount takes ss out of the connected count, once. A refusal calls it
// before the client is told, so a client that has read its refusal is no
// longer counted.
func (s *Server) uncount(ss *session) {
	if ss.uncounted.CompareAndSwap(false, true) {
		s.clients.Add(-1)
	}
}

func (s *Server) forget(ss *session) {
	s.uncount(ss)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.live, ss)
	s.counters.sessionEnded(ss)
	if ss.key.pid != 0 {
		delete(s.byKey, ss.key)
	}
}

// Failed logins are limited per source address: after maxLoginFailures in
// loginFailureWindow, further attempts are refused until the window passes.
const (
	maxLoginFailures   = 10
	loginFailureWindow = time.Minute
)

type loginFailures struct {
	mu     sync.Mutex
	byAddr map[string]*failureCount
}

type failureCount struct {
	n     int
	since time.Time
}

func (lf *loginFailures) blocked(addr string) bool {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	fc := lf.byAddr[addr]
	if fc == nil {
		return false
	}
	if time.Since(fc.since) > loginFailureWindow {
		delete(lf.byAddr, addr)
		return false
	}
	return fc.n >= maxLoginFailures
}

func (lf *loginFailures) record(addr string) {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	if lf.byAddr == nil {
		lf.byAddr = map[string]*failureCount{}
	}
	// Forget stale addresses now and then, so the map stays small.
	if len(lf.byAddr) > 10000 {
		for a, fc := range lf.byAddr {
			if time.Since(fc.since) > loginFailureWindow {
				delete(lf.byAddr, a)
			}
		}
	}
	fc := lf.byAddr[addr]
	if fc == nil || time.Since(fc.since) > loginFailureWindow {
		fc = &failureCount{since: time.Now()}
		lf.byAddr[addr] = fc
	}
	fc.n++
}
