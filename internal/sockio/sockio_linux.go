//go:build linux

package sockio

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Conn is a *net.TCPConn whose Read and Write are raw system calls. Every
// other method, SyscallConn included, is the TCPConn's.
type Conn struct {
	*net.TCPConn
	raw syscall.RawConn

	// One operation per direction at a time: the callbacks below are made
	// once and share these fields, so that a call allocates nothing.
	rmu     sync.Mutex
	rbuf    []byte
	rn      int
	rerr    syscall.Errno
	readFn  func(fd uintptr) bool
	wmu     sync.Mutex
	wbuf    []byte
	wn      int
	werr    syscall.Errno
	writeFn func(fd uintptr) bool

	// WriteThenRead's state: true while its request is being written.
	exWriting  bool
	exchangeFn func(fd uintptr) bool
}

// Wrap returns conn with raw reads and writes when it is a TCP connection
// on this platform, and conn itself otherwise.
func Wrap(conn net.Conn) net.Conn {
	tcp, ok := conn.(*net.TCPConn)
	if !ok {
		return conn
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		return conn
	}
	c := &Conn{TCPConn: tcp, raw: raw}
	c.readFn = c.readOnce
	c.writeFn = c.writeAll
	c.exchangeFn = c.exchange
	return c
}

func (c *Conn) readOnce(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rbuf[0])), uintptr(len(c.rbuf)))
		switch e {
		case 0:
			c.rn = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // the poller waits for readiness, then calls again
		default:
			c.rerr = e
			return true
		}
	}
}

func (c *Conn) writeAll(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		// send with MSG_NOSIGNAL: a peer that went away is an EPIPE
		// error, never a signal.
		p := c.wbuf[c.wn:]
		n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)),
			syscall.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0:
			c.wn += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.werr = e
			return true
		}
	}
	return true
}

// Read reads like net.Conn's Read: io.EOF at the end of the stream,
// *net.OpError otherwise, deadlines and Close honoured.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rbuf, c.rn, c.rerr = p, 0, 0
	err := c.raw.Read(c.readFn)
	n, errno := c.rn, c.rerr
	c.rbuf = nil
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p unless an error or deadline stops it, like
// net.Conn's Write.
func (c *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf, c.wn, c.werr = p, 0, 0
	err := c.raw.Write(c.writeFn)
	n, errno := c.wn, c.werr
	c.wbuf = nil
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// WriteThenRead writes all of req and then reads the answer into resp,
// without first trying a read that can only find nothing.
//
// A plain Write then Read costs one more system call per round trip: the
// poller learns whether data is there only by trying, so the read made
// right after the request fails with EAGAIN before the goroutine parks.
// Here the read side of the poller is armed before the request is written
// (raw.Read resets its readiness, then calls exchange, which writes and
// reports "not ready"), so the answer's arrival, necessarily later, wakes
// the goroutine and the first read finds it. Bytes that were already
// waiting unread are read with the answer, not before it: callers use this
// only when a request is sure to be answered, under a read deadline.
//
// werr is the write's error (nothing was read then), rerr the read's; both
// are shaped like Write's and Read's.
func (c *Conn) WriteThenRead(req, resp []byte) (n int, werr, rerr error) {
	if len(req) == 0 {
		n, rerr = c.Read(resp)
		return n, nil, rerr
	}
	if len(resp) == 0 {
		_, werr = c.Write(req)
		return 0, werr, nil
	}
	c.wmu.Lock()
	c.rmu.Lock()
	c.wbuf, c.wn, c.werr = req, 0, 0
	c.rbuf, c.rn, c.rerr = resp, 0, 0
	c.exWriting = true
	err := c.raw.Read(c.exchangeFn)
	writing, wn, wErrno := c.exWriting, c.wn, c.werr
	n, rErrno := c.rn, c.rerr
	c.rbuf = nil
	c.rmu.Unlock()
	switch {
	case wErrno != 0:
		c.wbuf = nil
		c.wmu.Unlock()
		return 0, c.opError("write", os.NewSyscallError("write", wErrno)), nil
	case writing:
		// The request is not all out: the send buffer filled up, or the
		// poller refused the wait (deadline passed, socket closed) before
		// anything was sent. Finish as a plain Write and Read would.
		c.wbuf = nil
		c.wmu.Unlock()
		if _, werr = c.Write(req[wn:]); werr != nil {
			return 0, werr, nil
		}
		n, rerr = c.Read(resp)
		return n, nil, rerr
	}
	c.wbuf = nil
	c.wmu.Unlock()
	switch {
	case err != nil:
		return 0, nil, c.opError("read", err)
	case rErrno != 0:
		return 0, nil, c.opError("read", os.NewSyscallError("read", rErrno))
	case n == 0:
		return 0, nil, io.EOF
	}
	return n, nil, nil
}

func (c *Conn) exchange(fd uintptr) bool {
	if !c.exWriting {
		return c.readOnce(fd)
	}
	if !c.writeAll(fd) || c.werr != 0 {
		return true // send buffer full, or failed: the caller takes over
	}
	c.exWriting = false
	return false // written: wait for the answer's arrival
}

// opError shapes err as the standard library would for this call. The
// poller's own errors (deadline, closed) arrive wrapped as "raw-read" or
// "raw-write" and are unwrapped first so the operation reads as it would.
func (c *Conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
