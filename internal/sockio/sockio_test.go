package sockio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/querycop/querycop/internal/testkit"
)

// pair returns a wrapped client side and the plain server side of a
// loopback TCP connection.
func pair(t *testing.T) (wrapped, peer net.Conn) {
	c, peer := testkit.LoopbackPair(t)
	wrapped = Wrap(c)
	t.Cleanup(func() { wrapped.Close() })
	return wrapped, peer
}

func TestWrapKeepsTCPConnMethods(t *testing.T) {
	w, _ := pair(t)
	if runtime.GOOS == "linux" {
		if _, ok := w.(*Conn); !ok {
			t.Fatalf("Wrap returned %T on linux", w)
		}
	}
	// What the rest of the gateway asserts on a connection.
	if _, ok := w.(syscall.Conn); !ok {
		t.Fatal("wrapped connection lost SyscallConn (the liveness peek needs it)")
	}
	if _, ok := w.(interface{ CloseWrite() error }); !ok {
		t.Fatal("wrapped connection lost CloseWrite")
	}
	if _, ok := w.(interface{ SetNoDelay(bool) error }); !ok {
		t.Fatal("wrapped connection lost SetNoDelay")
	}
	if got := Wrap(nil); got != nil {
		t.Fatalf("Wrap(nil) = %v", got)
	}
}

func TestReadWriteBothWays(t *testing.T) {
	w, peer := pair(t)
	if n, err := w.Write([]byte("ping")); n != 4 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	buf := make([]byte, 16)
	if _, err := io.ReadFull(peer, buf[:4]); err != nil || string(buf[:4]) != "ping" {
		t.Fatalf("peer read %q, %v", buf[:4], err)
	}
	if _, err := peer.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(w, buf[:4]); err != nil || string(buf[:4]) != "pong" {
		t.Fatalf("wrapped read %q, %v", buf[:4], err)
	}
	if n, err := w.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) = %d, %v", n, err)
	}
	if n, err := w.Write(nil); n != 0 || err != nil {
		t.Fatalf("Write(nil) = %d, %v", n, err)
	}
}

// A write larger than the socket buffers waits for the peer to read
// (EAGAIN, then the poller) and still delivers every byte in order.
func TestLargeWriteWaitsForSlowReader(t *testing.T) {
	w, peer := pair(t)
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	got := make(chan []byte, 1)
	go func() {
		time.Sleep(100 * time.Millisecond) // let the sender fill the buffers
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	if n, err := w.Write(data); n != len(data) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	w.(interface{ CloseWrite() error }).CloseWrite()
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatalf("peer got %d bytes, want the %d written, in order", len(b), len(data))
	}
}

func TestEOF(t *testing.T) {
	w, peer := pair(t)
	peer.Close()
	if n, err := w.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Fatalf("Read after the peer closed = %d, %v; want 0, io.EOF", n, err)
	}
}

func TestReadDeadline(t *testing.T) {
	w, _ := pair(t)
	w.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := w.Read(make([]byte, 8))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline = %v; want a timeout", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("error %#v is not a read *net.OpError", err)
	}
	// A deadline in the past unblocks a reader already waiting.
	w.SetReadDeadline(time.Time{})
	err = unblockedRead(t, w, func() { w.SetReadDeadline(time.Now()) })
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read unblocked by a deadline in the past = %v", err)
	}
}

// unblockedRead starts a read on w that has nothing to read, calls unblock
// once the read waits, and returns the read's error.
func unblockedRead(t *testing.T, w net.Conn, unblock func()) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { _, err := w.Read(make([]byte, 8)); done <- err }()
	time.Sleep(50 * time.Millisecond)
	unblock()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting read was not unblocked")
		return nil
	}
}

func TestWriteDeadline(t *testing.T) {
	w, _ := pair(t) // the peer never reads
	w.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	n, err := w.Write(make([]byte, 64<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write to a peer that does not read = %d, %v; want a timeout", n, err)
	}
	if n <= 0 || n >= 64<<20 {
		t.Fatalf("Write reported %d bytes written; want the part the buffers took", n)
	}
}

func TestCloseUnblocksReader(t *testing.T) {
	w, _ := pair(t)
	if err := unblockedRead(t, w, func() { w.Close() }); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed connection = %v; want net.ErrClosed", err)
	}
}

// A peer that resets the connection gives the syscall error, wrapped as the
// standard library wraps it, and writing to it later never raises SIGPIPE.
func TestResetByPeer(t *testing.T) {
	w, peer := pair(t)
	peer.(*net.TCPConn).SetLinger(0)
	peer.Close()
	time.Sleep(50 * time.Millisecond)
	_, err := w.Read(make([]byte, 8))
	var se *os.SyscallError
	if !errors.As(err, &se) {
		t.Fatalf("read after a reset = %v; want an *os.SyscallError", err)
	}
	var werr error
	for range 3 {
		if _, werr = w.Write([]byte("x")); werr != nil {
			break
		}
	}
	if werr == nil {
		t.Fatal("writes to a reset connection kept succeeding")
	}
}

// Reads and writes run at the same time from different goroutines, as
// the relay does, under -race.
func TestConcurrentReadAndWrite(t *testing.T) {
	w, peer := pair(t)
	const rounds = 2000
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // echo until the wrapped side stops writing
		defer wg.Done()
		io.Copy(peer, peer)
	}()
	errs := make(chan error, 1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 64)
		for i := range rounds {
			if _, err := io.ReadFull(w, buf[:8]); err != nil {
				errs <- err
				return
			}
			if buf[0] != byte(i) {
				errs <- errors.New("echo out of order")
				return
			}
		}
	}()
	msg := make([]byte, 8)
	for i := range rounds {
		msg[0] = byte(i)
		if _, err := w.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	w.(interface{ CloseWrite() error }).CloseWrite()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
