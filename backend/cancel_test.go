package backend

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/querycop/querycop/internal/pgframe"
)

// cancelTarget listens like a server taking cancel requests and reports
// what each connection sent before it closed.
func cancelTarget(t *testing.T) (*Conn, <-chan []byte) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan []byte, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// Like PostgreSQL: read the 16-byte request, then close.
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			b := make([]byte, 16)
			n, _ := io.ReadFull(c, b)
			c.Close()
			got <- b[:n]
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	d := &Dialer{cfg: Config{Host: "127.0.0.1", Port: port, ConnectTimeout: 5 * time.Second}}
	return &Conn{dialer: d, pid: 4242, secretKey: []byte{1, 2, 3, 4}}, got
}

func TestCancelIfSendsTheRequest(t *testing.T) {
	c, got := cancelTarget(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if sent, err := c.CancelIf(ctx, func() bool { return true }); err != nil || !sent {
		t.Fatalf("CancelIf = %v, %v; want true, nil", sent, err)
	}
	b := <-got
	if len(b) != 16 || binary.BigEndian.Uint32(b[4:8]) != pgframe.CancelRequestCode ||
		binary.BigEndian.Uint32(b[8:12]) != 4242 || string(b[12:]) != "\x01\x02\x03\x04" {
		t.Fatalf("cancel request on the wire = %x; want length 16, code, pid 4242, key 01020304", b)
	}
}

// When the session has let go of the backend by the time the cancel
// connection is open, nothing is sent: the backend may be running another
// client's query.
func TestCancelIfSendsNothingWhenNoLongerWanted(t *testing.T) {
	c, got := cancelTarget(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sent, err := c.CancelIf(ctx, func() bool { return false })
	if err != nil || sent {
		t.Fatalf("CancelIf = %v, %v; want false, nil", sent, err)
	}
	select {
	case b := <-got:
		if len(b) != 0 {
			t.Fatalf("the server got %x; want nothing", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the cancel connection was not closed")
	}
}

// A server that reads the request but does not close the connection before
// the deadline has not confirmed it: it may still act on it later, so
// CancelIf says it was sent and returns ErrCancelUnconfirmed.
func TestCancelIfReportsAnUnconfirmedRequest(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = io.ReadFull(c, make([]byte, 16))
		held <- c // read, never answered: a stalled server
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	d := &Dialer{cfg: Config{Host: "127.0.0.1", Port: port, ConnectTimeout: 300 * time.Millisecond}}
	c := &Conn{dialer: d, pid: 4242, secretKey: []byte{1, 2, 3, 4}}
	sent, err := c.CancelIf(context.Background(), func() bool { return true })
	if !sent || !errors.Is(err, ErrCancelUnconfirmed) {
		t.Fatalf("CancelIf against a stalled server = %v, %v; want true, ErrCancelUnconfirmed", sent, err)
	}
	(<-held).Close()
}
