package backend

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/querycop/querycop/internal/pgframe"
)

// Conn is one authenticated backend connection, taken over from pgconn
// after start-up. The relay reads and writes NetConn directly. A Conn is
// used by one session at a time; Cancel may be called concurrently.
type Conn struct {
	netConn   net.Conn
	pid       uint32
	secretKey []byte
	params    map[string]string
	tls       bool
	created   time.Time
	dialer    *Dialer
	// For Alive and closeWrite, which only the connection's holder calls.
	rawConn   syscall.RawConn
	peekFn    func(fd uintptr) bool
	peekAlive bool
	// credentialUseUntil is when the token this connection authenticated
	// with stops being good for new connections; zero in pass-through mode.
	credentialUseUntil time.Time
	// ctlBuf is where Exec and Query read the server's answers (only the
	// holder calls them); made on first use.
	ctlBuf []byte
	// drained counts what Terminate and AwaitGone dropped since watchSince.
	drained    int
	watchSince time.Time

	// Attachment is state a higher layer keeps with this connection across
	// the sessions that use it (transaction pooling: the statements prepared
	// on it, the settings applied). Only the current holder touches it.
	Attachment any
}

// NewConn wraps a connection that is already authenticated, for dialers
// other than Dialer (the fakes of other packages' tests). Such a Conn
// cannot send a cancel request.
func NewConn(nc net.Conn, pid uint32, params map[string]string, credentialUseUntil time.Time) *Conn {
	return &Conn{netConn: nc, pid: pid, params: params, created: time.Now(), credentialUseUntil: credentialUseUntil}
}

// errNoCancel is a cancel request on a Conn that no Dialer made.
var errNoCancel = errors.New("this connection cannot be cancelled: it was not opened by a backend.Dialer")

// CredentialUseUntil is the horizon of the token the connection was
// authenticated with (zero without a token): the pool retires it by then.
func (c *Conn) CredentialUseUntil() time.Time { return c.credentialUseUntil }

// NetConn is the socket to the server, TLS-wrapped when TLS is in use.
func (c *Conn) NetConn() net.Conn { return c.netConn }

// PID is the server process serving this connection.
func (c *Conn) PID() uint32 { return c.pid }

// ParameterStatus returns the server's reported run-time parameters at
// start-up (server_version, client_encoding, ...). Callers must not modify it.
func (c *Conn) ParameterStatus() map[string]string { return c.params }

// TLS reports whether the connection is encrypted.
func (c *Conn) TLS() bool { return c.tls }

// Created is when the connection was authenticated.
func (c *Conn) Created() time.Time { return c.created }

// ErrCancelUnconfirmed is a cancel request that was sent but that the
// server did not confirm by closing the connection in time: it may still
// cancel whatever the backend runs later.
var ErrCancelUnconfirmed = errors.New("cancel request sent, not confirmed by the server")

// Cancel asks the server to cancel the query running on c, over a new
// connection that follows the same TLS rules as c itself. As with libpq,
// success only means the request was delivered.
func (c *Conn) Cancel(ctx context.Context) error {
	_, err := c.CancelIf(ctx, nil)
	return err
}

// CancelIf is Cancel, except that once the new connection is open it asks
// wanted (when not nil) whether the request still applies, and sends
// nothing when it does not. A pooled connection can move to another client
// while the cancel connection is being opened; the later the check, the
// smaller the chance of cancelling that client's query instead. sent says
// whether the request went out.
func (c *Conn) CancelIf(ctx context.Context, wanted func() bool) (sent bool, err error) {
	if c.dialer == nil {
		return false, errNoCancel
	}
	ctx, cancel := context.WithTimeout(ctx, c.dialer.cfg.ConnectTimeout)
	defer cancel()
	policy := plainOnly
	if c.tls {
		policy = tlsOnly
	}
	addr := net.JoinHostPort(c.dialer.cfg.Host, portString(c.dialer.cfg.Port))
	conn, _, err := c.dialer.dialNet(ctx, "tcp", addr, policy)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	msg := make([]byte, 12, 12+len(c.secretKey))
	binary.BigEndian.PutUint32(msg[0:4], uint32(12+len(c.secretKey)))
	binary.BigEndian.PutUint32(msg[4:8], pgframe.CancelRequestCode)
	binary.BigEndian.PutUint32(msg[8:12], c.pid)
	msg = append(msg, c.secretKey...)
	if wanted != nil && !wanted() {
		return false, nil
	}
	if _, err := conn.Write(msg); err != nil {
		return false, err
	}
	// The server closes the connection once it has acted on the request;
	// waiting for that keeps the cancel ordered before whatever the caller
	// does next. A request sent but not confirmed (the deadline came first)
	// may still be acted on later: the caller must not reuse c.
	if _, err := io.Copy(io.Discard, conn); err != nil {
		return true, fmt.Errorf("%w: %w", ErrCancelUnconfirmed, err)
	}
	return true, nil
}

// terminate is the Terminate message: 'X' and a length of 4.
var terminate = []byte{'X', 0, 0, 0, 4}

// Close says goodbye to the server and closes the socket, without waiting
// for the server process to end (Terminate waits).
func (c *Conn) Close() error {
	_ = c.netConn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.netConn.Write(terminate)
	return c.netConn.Close()
}

// Terminate ends the session and waits up to wait for the server to close
// its end, which it does as its process exits: for a connection that was
// running a statement, only once that statement ends, since PostgreSQL
// reads the Terminate after it (a statement that ignores cancellation runs
// on whether or not the socket is closed). Until then the process exists
// and counts against max_connections, so a pool must go on counting the
// connection. It reports whether the wait is over; otherwise the socket
// stays open for AwaitGone.
//
// What the server sends meanwhile is read and dropped, up to
// terminateDrain bytes: a server still producing results (a client that
// queued many queries and left) is not served to the end but cut off, by
// closing the socket, and exits at its next write. The wait is then over
// too, as it is when the Terminate cannot be sent.
func (c *Conn) Terminate(wait time.Duration) (over bool) {
	_ = c.netConn.SetWriteDeadline(time.Now().Add(time.Second))
	_, werr := c.netConn.Write(terminate)
	// Then the end of input, which every server ends on, including one
	// whose stream a cut write left inside a message.
	if !c.closeWrite() && werr != nil {
		c.netConn.Close() // the server's cue to go, which cannot be watched
		return true
	}
	c.drained = 0
	c.watchSince = time.Now()
	return c.awaitGone(time.Now().Add(wait))
}

// terminateWatchMax bounds the whole wait for a server process to exit: a
// safety net (a process that runs on past it is no longer counted).
const terminateWatchMax = 10 * time.Minute

// terminateDrain bounds what Terminate and AwaitGone read and drop.
const terminateDrain = 64 << 10

// AwaitGone goes on waiting after Terminate reported false, until the
// server closes (or sends more than terminateDrain), stop is closed or
// terminateWatchMax has passed; the socket is then closed. gone is false
// when stop or terminateWatchMax ended the wait.
func (c *Conn) AwaitGone(stop <-chan struct{}) (gone bool) {
	for {
		select {
		case <-stop:
			c.netConn.Close()
			return false
		default:
		}
		if time.Since(c.watchSince) > terminateWatchMax {
			c.netConn.Close()
			return false
		}
		if c.awaitGone(time.Now().Add(time.Second)) {
			return true
		}
	}
}

// awaitGone reads and drops until the server closes or has sent more
// than terminateDrain (true; the socket is then closed) or until (false).
func (c *Conn) awaitGone(until time.Time) bool {
	var buf [4096]byte
	_ = c.netConn.SetReadDeadline(until)
	for {
		n, err := c.netConn.Read(buf[:])
		c.drained += n
		if err == nil && c.drained <= terminateDrain {
			continue
		}
		var ne net.Error
		if err != nil && errors.As(err, &ne) && ne.Timeout() {
			return false
		}
		c.netConn.Close()
		return true
	}
}
