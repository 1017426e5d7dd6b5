//go:build linux

package wire

import (
	"net"

	"golang.org/x/sys/unix"
)

// clientClosed reports whether the client has closed its end of conn (or
// reset it), without reading: bytes it sent before leaving stay unread, so
// a peek could not see the end behind them (libpq sends Terminate, then
// closes), but the socket's TCP state can.
func clientClosed(conn net.Conn) bool {
	raw, ok := clientSocket(conn)
	if !ok {
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
