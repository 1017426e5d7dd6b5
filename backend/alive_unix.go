//go:build linux || darwin || freebsd || netbsd || openbsd

package backend

import (
	"crypto/tls"
	"errors"
	"syscall"
	"time"
	"unsafe"
)

// Alive checks, without blocking, that an idle connection has neither been
// closed by the server nor received anything (an idle server says nothing
// unless it is going away, e.g. the FATAL it sends when shutting down). It
// peeks at the socket itself: a read deadline in the past would make Go
// return before looking at the socket at all.
func (c *Conn) Alive() bool {
	rc, err := c.socket()
	if errors.Is(err, errNoSocket) {
		return true
	}
	if err != nil {
		return false
	}
	if c.peekFn == nil {
		// Made once per connection: on every acquire (every transaction
		// in transaction mode) it would allocate each time.
		c.peekFn = c.peek
	}
	c.peekAlive = false
	err = rc.Read(c.peekFn)
	return err == nil && c.peekAlive
}

// errNoSocket is a connection with no operating-system socket under it
// (the fakes of other packages' tests).
var errNoSocket = errors.New("no socket under this connection")

// socket is the TCP socket under the connection (and under TLS), looked
// up once per connection: Alive runs on every acquire.
func (c *Conn) socket() (syscall.RawConn, error) {
	if c.rawConn != nil {
		return c.rawConn, nil
	}
	raw := c.netConn
	if tc, ok := raw.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	sc, ok := raw.(syscall.Conn)
	if !ok {
		return nil, errNoSocket
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	c.rawConn = rc
	return rc, nil
}

// peek is Alive's RawConn.Read callback.
func (c *Conn) peek(fd uintptr) bool {
	var b [1]byte
	// A raw call: MSG_DONTWAIT never blocks, and a scheduler-visible
	// system call on every acquire costs more than the peek (see
	// internal/sockio).
	_, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	// EAGAIN: nothing to read, the healthy case. Anything else (data,
	// end of stream, an error) means the connection is not usable.
	c.peekAlive = errno == syscall.EAGAIN || errno == syscall.EWOULDBLOCK
	return true
}

// closeWrite ends what the gateway sends with a TCP FIN, under TLS too, so
// the server sees the end of its input whatever state the stream is in: a
// write the relay cut short leaves it inside a message, where a Terminate
// would be read as the rest of that message, and a timed-out write leaves
// crypto/tls unable to send anything. False where the socket cannot be
// reached.
func (c *Conn) closeWrite() bool {
	rc, err := c.socket()
	if err != nil {
		return false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		// Watching for the process to go must not outlast an unreachable
		// server: it would hold the pool's place through a failover.
		giveUpUnacked(fd, int(unreachableAfter/time.Millisecond))
		serr = syscall.Shutdown(int(fd), syscall.SHUT_WR)
	}); err != nil {
		return false
	}
	return serr == nil
}

// unreachableAfter is how long the Terminate and FIN may go unacknowledged
// before the server counts as unreachable and the watch ends.
const unreachableAfter = 5 * time.Second
