//go:build linux

package wire

import (
	"crypto/tls"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// clientClosed reports whether the client has closed its end of conn (or
// reset it), without reading: bytes it sent before leaving stay unread, so
// a peek could not see the end behind them (libpq sends Terminate, then
// closes), but the socket's TCP state can.
func clientClosed(conn net.Conn) bool {
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	_ = raw.Control(func(fd uintptr) {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return // not TCP: not known
		}
		// CLOSE_WAIT: the client's FIN came; CLOSE: it reset the connection.
		closed = info.State == unix.BPF_TCP_CLOSE_WAIT || info.State == unix.BPF_TCP_CLOSE
	})
	return closed
}
