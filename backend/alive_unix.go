//go:build unix

package backend

import (
	"crypto/tls"
	"errors"
	"syscall"
)

// Alive checks, without blocking, that an idle connection has neither been
// closed by the server nor received anything (an idle server says nothing
// unless it is going away, e.g. the FATAL it sends when shutting down). It
// peeks at the socket itself: a read deadline in the past would make Go
// return before looking at the socket at all.
func (c *Conn) Alive() bool {
	raw := c.netConn
	if tc, ok := raw.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	sc, ok := raw.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// EAGAIN: nothing to read, the healthy case. n > 0: unexpected
		// data. n == 0: the server closed the connection.
		alive = n < 0 && (errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK))
		return true
	})
	return err == nil && alive
}
