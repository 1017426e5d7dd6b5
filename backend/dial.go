package backend

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/internal/pgframe"
	"github.com/querycop/querycop/internal/sockio"
	"github.com/querycop/querycop/token"
)

// TokenSource hands out the backend credential in token mode;
// *token.Source satisfies it.
type TokenSource interface {
	Token(ctx context.Context, t token.Target) (token.Token, error)
	// Evict forgets a token the server refused.
	Evict(t token.Target, value string)
}

// Params is what a client asked for at start-up.
type Params struct {
	User     string
	Database string
	// Password is the client's own password, used in pass-through mode only.
	Password string
	// SCRAM, when set, logs in with these keys instead of Password
	// (pass-through mode, when the gateway checked the client against a
	// SCRAM verifier and so never saw its password).
	SCRAM *SCRAMKeys
	// Runtime holds the other start-up parameters (application_name,
	// options, ...), sent to the server in its StartupMessage.
	Runtime map[string]string
}

// Dialer opens authenticated backend connections. It is safe for concurrent
// use and holds no connection itself.
type Dialer struct {
	cfg    Config
	tls    *tls.Config // nil for disable
	tokens TokenSource // nil in pass-through mode
	base   *pgconn.Config
	net    net.Dialer
}

// NewDialer prepares a dialer for cfg, which must have passed Validate.
// tokens is nil in pass-through mode.
func NewDialer(cfg Config, tokens TokenSource) (*Dialer, error) {
	tlsConfig, err := newTLSConfig(cfg)
	if err != nil {
		return nil, err
	}
	// ParseConfig also reads PG* variables and ~/.pgpass. Every field that
	// could change the target, identity or TLS is overwritten below, so a
	// stray PGSSLMODE or PGHOST in the container changes nothing.
	base, err := pgconn.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, fmt.Errorf("preparing backend connection config: %w", err)
	}
	base.Host = cfg.Host
	base.Port = uint16(cfg.Port)
	base.Password = ""
	base.TLSConfig = nil
	base.Fallbacks = nil
	base.RuntimeParams = map[string]string{}
	base.ConnectTimeout = 0 // Dial bounds the whole attempt with a context instead
	base.ValidateConnect = nil
	base.AfterConnect = nil
	base.AfterNetConnect = nil
	base.OnNotice = nil
	base.OnNotification = nil
	base.KerberosSrvName = ""
	base.KerberosSpn = ""
	base.MinProtocolVersion = "3.0"
	base.MaxProtocolVersion = "3.0"
	base.ChannelBinding = "prefer"
	base.RequireAuth = ""
	base.SSLNegotiation = "postgres"
	// Resolution happens in dialFunc, so that a DNS failure is reported as a
	// dial failure like any other.
	base.LookupFunc = func(_ context.Context, host string) ([]string, error) { return []string{host}, nil }
	return &Dialer{cfg: cfg, tls: tlsConfig, tokens: tokens, base: base}, nil
}

// TokenMode reports whether connections authenticate with a minted token.
func (d *Dialer) TokenMode() bool { return d.tokens != nil }

// Dial opens one connection authenticated as p.User. Errors are a
// *token.Error, *DialError, *TLSError, *StartupError or the server's own
// *pgconn.PgError, never containing the credential.
func (d *Dialer) Dial(ctx context.Context, p Params) (*Conn, error) {
	if d.tokens == nil {
		return d.dialWith(ctx, p, p.Password)
	}
	target := token.Target{Host: d.cfg.Host, Port: d.cfg.Port, User: p.User, Database: p.Database}
	for attempt := 0; ; attempt++ {
		// Minted before the connect timeout starts: the command has its own.
		tok, err := d.tokens.Token(ctx, target)
		if err != nil {
			return nil, err
		}
		c, err := d.dialWith(ctx, p, tok.Value)
		if err == nil {
			c.credentialUseUntil = tok.UseUntil
			return c, nil
		}
		// A token revoked or rotated before its exp: forget it and try once
		// more with a fresh one, so it costs one retry rather than an outage.
		var pgErr *pgconn.PgError
		if attempt == 0 && errors.As(err, &pgErr) && (pgErr.Code == "28P01" || pgErr.Code == "28000") {
			d.tokens.Evict(target, tok.Value)
			continue
		}
		return nil, err
	}
}

func (d *Dialer) dialWith(ctx context.Context, p Params, password string) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.ConnectTimeout)
	defer cancel()

	switch d.cfg.TLSMode {
	case TLSDisable:
		c, _, err := d.connect(ctx, p, password, plainOnly)
		return c, err
	case TLSAllow:
		// libpq: plaintext first; if the server turns it away, try TLS.
		c, _, err := d.connect(ctx, p, password, plainOnly)
		if retryOtherWay(err) {
			c, _, err = d.connect(ctx, p, password, tlsOnly)
		}
		return c, err
	case TLSPrefer:
		// libpq: TLS first; on a failed handshake, or a server that refused
		// us over TLS, try once more in plaintext.
		c, usedTLS, err := d.connect(ctx, p, password, tlsOrPlain)
		if usedTLS && (isTLSError(err) || retryOtherWay(err)) {
			c, _, err = d.connect(ctx, p, password, plainOnly)
		}
		return c, err
	default:
		c, _, err := d.connect(ctx, p, password, tlsOnly)
		return c, err
	}
}

type tlsPolicy int

const (
	plainOnly  tlsPolicy = iota
	tlsOnly              // the server must accept TLS
	tlsOrPlain           // plaintext on the same socket when the server answers 'N'
)

// connect makes one attempt. usedTLS reports whether TLS was negotiated (or
// its handshake attempted), for the prefer fallback.
func (d *Dialer) connect(ctx context.Context, p Params, password string, policy tlsPolicy) (*Conn, bool, error) {
	if p.SCRAM != nil && d.tokens == nil {
		return d.connectWithKeys(ctx, p, policy)
	}
	cfg := d.base.Copy()
	cfg.User = p.User
	cfg.Database = p.Database
	cfg.Password = password
	cfg.RuntimeParams = maps.Clone(p.Runtime)
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	// Atomic: after a failed start-up pgconn may send a cancel request from
	// a goroutine of its own through this same DialFunc.
	var usedTLS atomic.Bool
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, tried, err := d.dialNet(ctx, network, addr, policy)
		if tried {
			usedTLS.Store(true)
		}
		return conn, err
	}
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, usedTLS.Load(), d.classify(err)
	}
	c, err := hijack(ctx, pc)
	if err != nil {
		return nil, usedTLS.Load(), err
	}
	c.dialer = d
	return c, usedTLS.Load(), nil
}

// dialNet opens the socket and, per policy, negotiates TLS with PostgreSQL's
// SSLRequest. TLS is done here rather than by pgconn so that each failure
// is classified exactly and the cancel path can reuse it.
func (d *Dialer) dialNet(ctx context.Context, network, addr string, policy tlsPolicy) (conn net.Conn, triedTLS bool, err error) {
	raw, err := d.net.DialContext(ctx, network, addr)
	if err != nil {
		return nil, false, &DialError{Addr: addr, Err: err}
	}
	if tcp, ok := raw.(*net.TCPConn); ok {
		_ = tcp.SetNoDelay(true)
		_ = tcp.SetKeepAlive(true)
	}
	raw = sockio.Wrap(raw)
	if policy == plainOnly || d.tls == nil {
		return raw, false, nil
	}
	conn, err = d.startTLS(ctx, raw, policy)
	if err != nil {
		raw.Close()
		return nil, true, err
	}
	_, isTLS := conn.(*tls.Conn)
	return conn, isTLS, nil
}

func (d *Dialer) startTLS(ctx context.Context, raw net.Conn, policy tlsPolicy) (net.Conn, error) {
	if deadline, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(deadline)
		defer raw.SetDeadline(time.Time{})
	}
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:4], 8)
	binary.BigEndian.PutUint32(req[4:8], pgframe.SSLRequestCode)
	if _, err := raw.Write(req[:]); err != nil {
		return nil, &TLSError{Err: err}
	}
	var answer [1]byte
	if _, err := io.ReadFull(raw, answer[:]); err != nil {
		return nil, &TLSError{Err: fmt.Errorf("reading the server's answer to SSLRequest: %w", err)}
	}
	switch answer[0] {
	case 'S':
		tc := tls.Client(raw, d.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, &TLSError{Err: err}
		}
		return tc, nil
	case 'N':
		if policy == tlsOrPlain {
			return raw, nil
		}
		return nil, &TLSError{Err: errServerRefusedTLS}
	default:
		return nil, &TLSError{Err: fmt.Errorf("unexpected answer %q to SSLRequest", answer[0])}
	}
}

func (d *Dialer) classify(err error) error {
	var dialErr *DialError
	var tlsErr *TLSError
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &dialErr):
		return dialErr
	case errors.As(err, &tlsErr):
		return tlsErr
	case errors.As(err, &pgErr):
		return pgErr
	case errors.Is(err, context.DeadlineExceeded):
		return &StartupError{Err: fmt.Errorf("no answer from the server within %s (GATEKEEPER_BACKEND_CONNECT_TIMEOUT)", d.cfg.ConnectTimeout), Timeout: true}
	}
	// pgconn's text names user, database and address before the cause;
	// keep the cause, which is what the operator acts on.
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		if perDial := errors.Unwrap(ce); perDial != nil {
			if cause := errors.Unwrap(perDial); cause != nil {
				return &StartupError{Err: cause}
			}
		}
	}
	return &StartupError{Err: err}
}

func isTLSError(err error) bool {
	var tlsErr *TLSError
	return errors.As(err, &tlsErr)
}

// retryOtherWay reports whether libpq would retry allow/prefer in the other
// TLS state: the server answered with an error that is not about the
// credential, the database or privileges (which a retry cannot fix).
func retryOtherWay(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "28P01", "3D000", "42501":
		return false
	}
	return true
}

func hijack(ctx context.Context, pc *pgconn.PgConn) (*Conn, error) {
	if err := pc.SyncConn(ctx); err != nil {
		pc.Close(ctx)
		return nil, &StartupError{Err: fmt.Errorf("syncing the new connection: %w", err)}
	}
	hc, err := pc.Hijack()
	if err != nil {
		pc.Close(ctx)
		return nil, &StartupError{Err: fmt.Errorf("taking over the new connection: %w", err)}
	}
	// From here on the relay reads the socket directly; anything pgconn had
	// already buffered would be lost, so refuse rather than corrupt.
	if n := hc.Frontend.ReadBufferLen(); n != 0 {
		hc.Conn.Close()
		return nil, &StartupError{Err: fmt.Errorf("server sent %d unexpected bytes after ReadyForQuery", n)}
	}
	_, isTLS := hc.Conn.(*tls.Conn)
	return &Conn{
		netConn:   hc.Conn,
		pid:       hc.PID,
		secretKey: hc.SecretKey,
		params:    hc.ParameterStatuses,
		tls:       isTLS,
		created:   time.Now(),
	}, nil
}

// newTLSConfig builds the backend leg's TLS settings for cfg.TLSMode, with
// libpq's meaning of each mode.
func newTLSConfig(cfg Config) (*tls.Config, error) {
	if cfg.TLSMode == TLSDisable {
		return nil, nil
	}
	serverName := cfg.TLSServerName
	if serverName == "" {
		serverName = cfg.Host
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	var roots *x509.CertPool
	if cfg.TLSCAFile != "" {
		var err error
		if roots, err = LoadCAFile(cfg.TLSCAFile); err != nil {
			return nil, err
		}
	}
	switch {
	case cfg.TLSMode == TLSVerifyFull:
		tc.RootCAs = roots
	case cfg.TLSMode == TLSVerifyCA, roots != nil:
		// verify-ca checks the chain but not the name. As in libpq, the
		// weaker modes check the chain too when a CA file is given (prefer
		// and allow then fall back to plaintext if the check fails).
		tc.InsecureSkipVerify = true
		tc.VerifyConnection = func(cs tls.ConnectionState) error { return verifyChain(cs, roots) }
	default:
		// allow, prefer, require: encryption without authentication, as libpq.
		tc.InsecureSkipVerify = true
	}
	return tc, nil
}

func verifyChain(cs tls.ConnectionState, roots *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("server presented no certificate")
	}
	opts := x509.VerifyOptions{Roots: roots, Intermediates: x509.NewCertPool()}
	for _, cert := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(cert)
	}
	_, err := cs.PeerCertificates[0].Verify(opts)
	return err
}

func portString(port int) string { return strconv.Itoa(port) }

// ProbeResult is what Probe learned about the server's endpoint.
type ProbeResult struct {
	Addr    string
	Elapsed time.Duration
	// TLS is the negotiated TLS state; nil when the connection is plaintext.
	TLS *tls.ConnectionState
}

// Probe checks that the server accepts connections and, in a TLS mode,
// completes the TLS handshake with the configured verification, without
// authenticating: a readiness check and a diagnosis that need no credential.
func (d *Dialer) Probe(ctx context.Context) (ProbeResult, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.ConnectTimeout)
	defer cancel()
	policy := tlsOnly
	switch d.cfg.TLSMode {
	case TLSDisable, TLSAllow:
		policy = plainOnly
	case TLSPrefer:
		policy = tlsOrPlain
	}
	res := ProbeResult{Addr: net.JoinHostPort(d.cfg.Host, portString(d.cfg.Port))}
	start := time.Now()
	conn, _, err := d.dialNet(ctx, "tcp", res.Addr, policy)
	res.Elapsed = time.Since(start)
	if err != nil {
		return res, err
	}
	if tc, ok := conn.(*tls.Conn); ok {
		st := tc.ConnectionState()
		res.TLS = &st
	}
	return res, conn.Close()
}
