package wire

import (
	"errors"
	"net"
	"sync/atomic"
	"time"
)

// errTerminate is the client's Terminate message: a clean end.
var errTerminate = errors.New("client sent Terminate")

// relay copies messages both ways until one side ends. The client side runs
// on the calling goroutine, the backend side on one more; whichever ends
// first unblocks the other with a read deadline rather than closing the
// backend, so a clean backend can be reused. reusable reports whether the
// backend stopped between messages, idle and outside a transaction.
func (ss *session) relay(back net.Conn) (reason string, reusable bool) {
	var fromBack framer
	var ending atomic.Bool
	backDone := make(chan error, 1)
	go func() {
		err := ss.pumpBackend(back, &fromBack)
		if ending.CompareAndSwap(false, true) {
			_ = ss.conn.SetReadDeadline(time.Now())
		}
		backDone <- err
	}()

	clientErr := ss.pumpClient(back)
	backendFirst := !ending.CompareAndSwap(false, true)
	if !backendFirst {
		_ = back.SetReadDeadline(time.Now())
	}
	backErr := <-backDone
	_ = back.SetReadDeadline(time.Time{})

	switch {
	case ss.killed.Load():
		return "shutdown", false
	case backendFirst:
		var cw *clientWriteError
		if errors.As(backErr, &cw) {
			return "client-gone", false
		}
		return "backend-gone", false
	case errors.Is(clientErr, errTerminate):
		return "client-close", fromBack.atBoundary() && fromBack.txStatus == 'I'
	case errors.Is(clientErr, errBadFrame):
		return "protocol-violation", false
	default:
		var bw *backendWriteError
		if errors.As(clientErr, &bw) {
			return "backend-gone", false
		}
		return "client-gone", false
	}
}

type backendWriteError struct{ err error }

func (e *backendWriteError) Error() string { return "writing to backend: " + e.err.Error() }

type clientWriteError struct{ err error }

func (e *clientWriteError) Error() string { return "writing to client: " + e.err.Error() }

// pumpClient forwards client messages to the backend, stopping before a
// Terminate, which is the gateway's to act on.
func (ss *session) pumpClient(back net.Conn) error {
	bufp := relayBufs.Get().(*[]byte)
	defer relayBufs.Put(bufp)
	buf := *bufp
	var f framer
	for {
		n, err := ss.conn.Read(buf)
		if n > 0 {
			stop, ferr := f.feed(buf[:n], 'X')
			end := n
			if stop >= 0 {
				end = stop
			}
			if ferr != nil {
				return ferr
			}
			if end > 0 {
				if _, werr := back.Write(buf[:end]); werr != nil {
					return &backendWriteError{werr}
				}
			}
			if stop >= 0 {
				return errTerminate
			}
		}
		if err != nil {
			return err
		}
	}
}

// pumpBackend forwards backend messages to the client, tracking message
// boundaries and the transaction status.
func (ss *session) pumpBackend(back net.Conn, f *framer) error {
	bufp := relayBufs.Get().(*[]byte)
	defer relayBufs.Put(bufp)
	buf := *bufp
	for {
		n, err := back.Read(buf)
		if n > 0 {
			if _, ferr := f.feed(buf[:n], 0); ferr != nil {
				return ferr
			}
			ss.writeMu.Lock()
			_, werr := ss.conn.Write(buf[:n])
			ss.writeMu.Unlock()
			if werr != nil {
				return &clientWriteError{werr}
			}
		}
		if err != nil {
			return err
		}
	}
}
