//go:build linux

// Command relayfloor is the least a PostgreSQL relay written in Go can cost
// on a machine: the benchmark runs it beside PgBouncer and Querycop
// (BENCH_TARGETS=floor-pair or floor-loop) to tell how much of Querycop's CPU
// per transaction is its own work and how much any Go relay pays.
//
// It does nothing a pooler must do beyond passing bytes and walking the
// message headers: no authentication (the start-up goes through to the
// server), no pooling (one server connection per client), no statistics, no
// timeouts. Two designs of the copy loop:
//
//	-mode pair  two goroutines per client, each reading one socket and writing
//	            the other: the design of Querycop's session relay, with its
//	            raw reads and writes (internal/sockio).
//	-mode loop  one event loop per GOMAXPROCS: level-triggered epoll over
//	            every relayed socket, readiness before reading (no read that
//	            returns EAGAIN), the epoll descriptor itself parked on Go's
//	            network poller, so the loop never blocks a thread: the design
//	            PgBouncer has, written in Go. Its reads, writes and epoll
//	            waits never block, so they are raw system calls too.
//
// What it assumes of its clients, as the benchmark's pgbench and psql run
// (PGSSLMODE=disable): the first thing a client sends is its start-up
// message (an SSLRequest would be walked as a typed message), and neither
// side half-closes (the end of either stream closes both).
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/querycop/querycop/internal/pgframe"
	"github.com/querycop/querycop/internal/sockio"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to accept clients on")
	target := flag.String("target", "", "PostgreSQL address, host:port")
	mode := flag.String("mode", "pair", "pair or loop")
	flag.Parse()
	if *target == "" || (*mode != "pair" && *mode != "loop") {
		fmt.Fprintln(os.Stderr, "usage: relayfloor -target host:port [-listen addr] [-mode pair|loop]")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relayfloor:", err)
		os.Exit(1)
	}
	var loops []*loop
	if *mode == "loop" {
		for range runtime.GOMAXPROCS(0) {
			l, err := newLoop()
			if err != nil {
				fmt.Fprintln(os.Stderr, "relayfloor:", err)
				os.Exit(1)
			}
			loops = append(loops, l)
		}
	}
	for n := 0; ; n++ {
		client, err := ln.Accept()
		if err != nil {
			// Out of descriptors, say: the clients already relayed go on.
			fmt.Fprintln(os.Stderr, "relayfloor: accept:", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		var l *loop
		if loops != nil {
			l = loops[n%len(loops)]
		}
		// Dialled apart from the accept loop, so a slow server does not
		// hold the clients behind this one.
		go relay(client, *target, l)
	}
}

func relay(client net.Conn, target string, l *loop) {
	server, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relayfloor: dial:", err)
		_ = client.Close()
		return
	}
	if l == nil {
		client, server = sockio.Wrap(client), sockio.Wrap(server)
		go pump(client, server, true)
		pump(server, client, false)
		return
	}
	if err := l.add(client.(*net.TCPConn), server.(*net.TCPConn)); err != nil {
		fmt.Fprintln(os.Stderr, "relayfloor: epoll:", err)
		_ = client.Close()
		_ = server.Close()
	}
}

// framer walks message headers, as every pooler must to know where a
// request ends; the start-up packet (no type byte) is skipped whole.
type framer struct {
	hdr     [pgframe.HeaderLen]byte
	hdrLen  int
	need    int
	startup bool
}

func (f *framer) feed(p []byte) {
	if f.startup {
		f.startup = false
		return
	}
	for i := 0; i < len(p); {
		if f.need > 0 {
			n := min(f.need, len(p)-i)
			f.need -= n
			i += n
			continue
		}
		n := copy(f.hdr[f.hdrLen:], p[i:])
		f.hdrLen += n
		i += n
		if f.hdrLen < len(f.hdr) {
			return
		}
		f.hdrLen = 0
		f.need = max(pgframe.Len(f.hdr[:]), 0)
	}
}

var bufs = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}

func pump(src, dst net.Conn, fromClient bool) {
	bp := bufs.Get().(*[]byte)
	defer bufs.Put(bp)
	f := framer{startup: fromClient}
	for {
		n, err := src.Read(*bp)
		if n > 0 {
			f.feed((*bp)[:n])
			if _, werr := dst.Write((*bp)[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	_ = src.Close()
	_ = dst.Close()
}

// side is one socket of a relayed pair, in a loop.
type side struct {
	conn    *net.TCPConn
	fd      int
	peer    *side
	f       framer
	pending []byte // read from this side, not yet written to the peer
}

type loop struct {
	epfd int
	poll syscall.RawConn // the epoll descriptor on Go's network poller
	// mu is held by the loop while it handles a batch of events and by add
	// while it registers a pair (on a dialling goroutine), so that the two
	// never see a side half-updated.
	mu    sync.Mutex
	sides map[int32]*side
}

func newLoop() (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	// Non-blocking, so that os.NewFile puts it on the network poller: an
	// epoll descriptor is readable while it has events.
	if err := unix.SetNonblock(epfd, true); err != nil {
		return nil, err
	}
	rc, err := os.NewFile(uintptr(epfd), "epoll").SyscallConn()
	if err != nil {
		return nil, err
	}
	l := &loop{epfd: epfd, poll: rc, sides: map[int32]*side{}}
	go l.run()
	return l, nil
}

func fdOf(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var fd int
	err = rc.Control(func(x uintptr) { fd = int(x) })
	return fd, err
}

func (l *loop) add(client, server *net.TCPConn) error {
	cfd, err := fdOf(client)
	if err != nil {
		return err
	}
	sfd, err := fdOf(server)
	if err != nil {
		return err
	}
	c := &side{conn: client, fd: cfd, f: framer{startup: true}}
	s := &side{conn: server, fd: sfd}
	c.peer, s.peer = s, c
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sides[int32(cfd)], l.sides[int32(sfd)] = c, s
	// Nothing is pending yet: both wait to read. The server first, so the
	// client's first bytes always have somewhere to go.
	for _, x := range []*side{s, c} {
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, x.fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(x.fd)}); err != nil {
			_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
			_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
			delete(l.sides, int32(cfd))
			delete(l.sides, int32(sfd))
			return err // the caller closes both
		}
	}
	return nil
}

// ctl registers what s waits for: to read when its last read is all
// written (back-pressure: a peer that does not read stops this side), to
// write when the peer's last read is not.
func (l *loop) ctl(op int, s *side) error {
	var ev uint32
	if len(s.pending) == 0 {
		ev |= unix.EPOLLIN
	}
	if len(s.peer.pending) > 0 {
		ev |= unix.EPOLLOUT
	}
	return unix.EpollCtl(l.epfd, op, s.fd, &unix.EpollEvent{Events: ev, Fd: int32(s.fd)})
}

func (l *loop) run() {
	events := make([]unix.EpollEvent, 256)
	buf := make([]byte, 32*1024)
	for {
		var n int
		var werr error
		// The network poller calls this first, and again each time the
		// epoll descriptor turns readable: the loop parks only when a
		// non-blocking wait found nothing.
		err := l.poll.Read(func(uintptr) bool {
			n, werr = epollWaitNow(l.epfd, events)
			return n > 0 || werr != nil
		})
		if err != nil || werr != nil {
			fmt.Fprintln(os.Stderr, "relayfloor: epoll:", errors.Join(err, werr))
			os.Exit(1)
		}
		l.mu.Lock()
		for _, ev := range events[:n] {
			s := l.sides[ev.Fd]
			if s == nil {
				continue // closed earlier in this batch
			}
			if ev.Events&(unix.EPOLLOUT|unix.EPOLLERR) != 0 && len(s.peer.pending) > 0 {
				if !l.flush(s.peer) {
					continue
				}
			}
			switch {
			case ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) == 0:
			case len(s.pending) == 0:
				l.forward(s, buf)
			case ev.Events&(unix.EPOLLHUP|unix.EPOLLERR) != 0:
				// Gone while what it sent waits for its peer to read: epoll
				// reports a hang-up whatever was asked, so leaving it would
				// make every wait return at once.
				l.close(s)
			}
		}
		l.mu.Unlock()
	}
}

// forward reads what s has and writes it to the peer, keeping what the
// peer did not take.
func (l *loop) forward(s *side, buf []byte) {
	r, err := rawIO(unix.SYS_READ, s.fd, buf)
	if err == unix.EAGAIN {
		return
	}
	if r <= 0 {
		l.close(s)
		return
	}
	s.f.feed(buf[:r])
	w, err := rawIO(unix.SYS_WRITE, s.peer.fd, buf[:r])
	if err != nil && err != unix.EAGAIN {
		l.close(s)
		return
	}
	if w < r {
		s.pending = append(s.pending[:0], buf[w:r]...)
		_ = l.ctl(unix.EPOLL_CTL_MOD, s)
		_ = l.ctl(unix.EPOLL_CTL_MOD, s.peer)
	}
}

// flush writes what s read earlier to its peer; false if the pair closed.
func (l *loop) flush(s *side) bool {
	w, err := rawIO(unix.SYS_WRITE, s.peer.fd, s.pending)
	if err != nil && err != unix.EAGAIN {
		l.close(s)
		return false
	}
	s.pending = s.pending[w:]
	if len(s.pending) == 0 {
		_ = l.ctl(unix.EPOLL_CTL_MOD, s)
		_ = l.ctl(unix.EPOLL_CTL_MOD, s.peer)
	}
	return true
}

func (l *loop) close(s *side) {
	for _, x := range []*side{s, s.peer} {
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, x.fd, nil)
		delete(l.sides, int32(x.fd)) // l.mu is held by the loop
		_ = x.conn.Close()
	}
}

// rawIO reads or writes a non-blocking socket; the count is 0 on error.
func rawIO(trap uintptr, fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return rawCall(trap, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), 0)
}

// epollWaitNow collects ready events without waiting (timeout 0).
func epollWaitNow(epfd int, events []unix.EpollEvent) (int, error) {
	return rawCall(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0)
}

// rawCall makes a system call that cannot block (the descriptors are
// non-blocking, the wait has no timeout) as a raw call, so the goroutine
// keeps its P, as internal/sockio does; an interrupted call is made again.
func rawCall(trap, a1, a2, a3, a4 uintptr) (int, error) {
	for {
		n, _, errno := unix.RawSyscall6(trap, a1, a2, a3, a4, 0, 0)
		switch errno {
		case 0:
			return int(n), nil
		case unix.EINTR:
		default:
			return 0, errno
		}
	}
}
