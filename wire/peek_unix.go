//go:build unix

package wire

import (
	"crypto/tls"
	"net"
	"syscall"
)

// unreadInput reports whether the client has sent bytes that the session
// has not read yet (for a cancel that overtook its request).
func unreadInput(c net.Conn) bool {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var n int
	_ = raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, _ = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	})
	return n > 0
}

// waitReadable blocks until the client's socket has bytes to read (or is
// closed, or its read deadline passes) without reading them, so the
// caller can note that a request is arriving before it consumes it: a
// cancel handled in between then still finds the request (see
// cancelwait.go). False when c is not a plain TCP connection (TLS keeps
// its own buffer).
func waitReadable(ss *session) bool {
	if ss.rawConn == nil {
		sc, ok := ss.conn.(syscall.Conn)
		if !ok {
			return false
		}
		raw, err := sc.SyscallConn()
		if err != nil {
			return false
		}
		ss.rawConn = raw
	}
	_ = ss.rawConn.Read(peekReady)
	return true
}

// peekReady is a RawConn.Read callback that reads nothing: it reports
// done once a byte is there (or the socket has an error or EOF).
func peekReady(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN
}
