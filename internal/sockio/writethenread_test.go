//go:build linux

package sockio

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

// answerAfter makes peer read want bytes of request, then write answer
// after delay; the request it read comes back on the channel.
func answerAfter(t *testing.T, peer io.ReadWriter, want int, delay time.Duration, answer string) <-chan []byte {
	t.Helper()
	got := make(chan []byte, 1)
	go func() {
		req := make([]byte, want)
		if _, err := io.ReadFull(peer, req); err != nil {
			got <- nil
			return
		}
		time.Sleep(delay)
		_, _ = peer.Write([]byte(answer))
		got <- req
	}()
	return got
}

// The answer comes later than the request: the call waits for it and
// returns it.
func TestWriteThenReadWaitsForTheAnswer(t *testing.T) {
	w, peer := pair(t)
	c := w.(*Conn)
	for i, delay := range []time.Duration{0, 30 * time.Millisecond} {
		req := []byte{'Q', byte(i)}
		got := answerAfter(t, peer, len(req), delay, "answer")
		buf := make([]byte, 64)
		n, werr, rerr := c.WriteThenRead(req, buf)
		if werr != nil || rerr != nil {
			t.Fatalf("round %d: WriteThenRead = %d, %v, %v", i, n, werr, rerr)
		}
		// The answer may arrive in pieces; read the rest plainly.
		for n < len("answer") {
			m, err := c.Read(buf[n:])
			if err != nil {
				t.Fatalf("round %d: rest of the answer: %v", i, err)
			}
			n += m
		}
		if string(buf[:n]) != "answer" {
			t.Fatalf("round %d: read %q", i, buf[:n])
		}
		if r := <-got; !bytes.Equal(r, req) {
			t.Fatalf("round %d: peer got %q, want %q", i, r, req)
		}
	}
}

// A request larger than the socket buffers cannot go out in the callback:
// it is finished as a plain write, every byte in order, and the answer
// is still read.
func TestWriteThenReadLargeRequest(t *testing.T) {
	w, peer := pair(t)
	c := w.(*Conn)
	req := make([]byte, 8<<20)
	for i := range req {
		req[i] = byte(i * 13)
	}
	got := make(chan []byte, 1)
	go func() {
		time.Sleep(20 * time.Millisecond) // the send buffer fills first
		b, err := io.ReadAll(io.LimitReader(peer, int64(len(req))))
		if err == nil {
			_, err = peer.Write([]byte("done"))
		}
		if err != nil {
			b = nil
		}
		got <- b
	}()
	buf := make([]byte, 16)
	n, werr, rerr := c.WriteThenRead(req, buf)
	if werr != nil || rerr != nil || string(buf[:n]) != "done"[:n] || n == 0 {
		t.Fatalf("WriteThenRead = %q, %v, %v", buf[:n], werr, rerr)
	}
	if b := <-got; !bytes.Equal(b, req) {
		t.Fatalf("the peer got %d bytes, not the request as sent", len(b))
	}
}

// A read deadline already past: the request still goes out (the caller
// counts it as sent), and the read reports the timeout.
func TestWriteThenReadDeadlinePassed(t *testing.T) {
	w, peer := pair(t)
	c := w.(*Conn)
	got := answerAfter(t, peer, 3, 0, "")
	_ = c.SetReadDeadline(time.Now().Add(-time.Second))
	_, werr, rerr := c.WriteThenRead([]byte("abc"), make([]byte, 8))
	if werr != nil || !errors.Is(rerr, os.ErrDeadlineExceeded) {
		t.Fatalf("WriteThenRead past the deadline = %v, %v; want no write error and a read timeout", werr, rerr)
	}
	if r := <-got; string(r) != "abc" {
		t.Fatalf("the peer got %q, want the request", r)
	}
}

// A deadline that passes while waiting for an answer that never comes.
func TestWriteThenReadNoAnswer(t *testing.T) {
	w, peer := pair(t)
	c := w.(*Conn)
	go func() { _, _ = io.ReadFull(peer, make([]byte, 1)) }() // reads, never answers
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, werr, rerr := c.WriteThenRead([]byte("x"), make([]byte, 8))
	if werr != nil || !errors.Is(rerr, os.ErrDeadlineExceeded) {
		t.Fatalf("WriteThenRead without an answer = %v, %v; want a read timeout", werr, rerr)
	}
}

// The peer closes after reading the request: EOF, as Read gives.
func TestWriteThenReadEOF(t *testing.T) {
	w, peer := pair(t)
	c := w.(*Conn)
	go func() {
		_, _ = io.ReadFull(peer, make([]byte, 2))
		peer.Close()
	}()
	n, werr, rerr := c.WriteThenRead([]byte("hi"), make([]byte, 8))
	if n != 0 || werr != nil || rerr != io.EOF {
		t.Fatalf("WriteThenRead to a peer that closed = %d, %v, %v; want 0, nil, io.EOF", n, werr, rerr)
	}
}

// Empty requests and buffers behave as Read and Write.
func TestWriteThenReadEmpty(t *testing.T) {
	w, peer := pair(t)
	c := w.(*Conn)
	if _, err := peer.Write([]byte("z")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if n, werr, rerr := c.WriteThenRead(nil, buf); n != 1 || werr != nil || rerr != nil || buf[0] != 'z' {
		t.Fatalf("WriteThenRead(nil, buf) = %d, %v, %v", n, werr, rerr)
	}
	got := answerAfter(t, peer, 2, 0, "")
	if n, werr, rerr := c.WriteThenRead([]byte("ok"), nil); n != 0 || werr != nil || rerr != nil {
		t.Fatalf("WriteThenRead(req, nil) = %d, %v, %v", n, werr, rerr)
	}
	if r := <-got; string(r) != "ok" {
		t.Fatalf("the peer got %q", r)
	}
}

// The transaction relay makes this call per transaction: it must not
// allocate.
func TestWriteThenReadAllocatesNothing(t *testing.T) {
	w, peer := pair(t)
	c := w.(*Conn)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		b := make([]byte, 1)
		for {
			if _, err := peer.Read(b); err != nil {
				return
			}
			if _, err := peer.Write(b); err != nil {
				return
			}
		}
	}()
	req, buf := []byte{1}, make([]byte, 8)
	allocs := testing.AllocsPerRun(200, func() {
		if n, werr, rerr := c.WriteThenRead(req, buf); n != 1 || werr != nil || rerr != nil {
			t.Fatalf("round trip: %d, %v, %v", n, werr, rerr)
		}
	})
	if allocs != 0 {
		t.Fatalf("WriteThenRead allocates %.1f times per call, want 0", allocs)
	}
}
