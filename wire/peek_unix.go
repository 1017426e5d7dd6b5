//go:build unix

package wire

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// clientSocket is the operating-system socket under a client connection,
// under its TLS layer too; false when there is none.
func clientSocket(c net.Conn) (syscall.RawConn, bool) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, false
	}
	raw, err := sc.SyscallConn()
	return raw, err == nil
}

// unreadInput reports whether the client has sent bytes that the session
// has not read yet (for a cancel that overtook its request).
func unreadInput(c net.Conn) bool {
	raw, ok := clientSocket(c)
	if !ok {
		return false
	}
	var n int
	_ = raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, _ = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	})
	return n > 0
}

// readFirst reads the client's next request into buf once it arrives,
// and notes its arrival (requestRead) in the same step under gateMu: a
// cancel handled at any moment then either finds the bytes still in the
// socket or the note, never neither (see cancelwait.go). A read that finds
// nothing waits in the poller as usual. ok is false when conn is not a
// plain TCP connection (TLS keeps its own buffer): the caller reads it
// itself then.
func readFirst(ss *session, buf []byte) (n int, err error, ok bool) {
	if ss.rawConn == nil {
		sc, isRaw := ss.conn.(syscall.Conn)
		if !isRaw {
			return 0, nil, false
		}
		raw, rerr := sc.SyscallConn()
		if rerr != nil {
			return 0, nil, false
		}
		ss.rawConn = raw
		ss.firstReadFn = ss.firstRead
	}
	ss.firstBuf, ss.firstN, ss.firstErrno = buf, 0, 0
	err = ss.rawConn.Read(ss.firstReadFn)
	n, errno := ss.firstN, ss.firstErrno
	ss.firstBuf = nil
	switch {
	case err != nil:
		return 0, err, true
	case errno != 0:
		return 0, os.NewSyscallError("read", errno), true
	case n == 0:
		return 0, io.EOF, true
	}
	return n, nil, true
}

// firstRead is readFirst's RawConn.Read callback.
func (ss *session) firstRead(fd uintptr) bool {
	ss.gateMu.Lock()
	defer ss.gateMu.Unlock()
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&ss.firstBuf[0])), uintptr(len(ss.firstBuf)))
		switch e {
		case 0:
			ss.firstN = int(n)
			if n > 0 {
				ss.reqRead = true // before anyone can look at the socket again
			}
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			ss.firstErrno = e
			return true
		}
	}
}
