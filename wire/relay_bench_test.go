package wire

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/rs/zerolog"

	"github.com/querycop/querycop/internal/sockio"
	"github.com/querycop/querycop/internal/testkit"
)

// relayRig is a session relaying between an application and a fake
// server over loopback TCP both ways, the gateway's ends wrapped as the
// server and the dialer wrap them in production. The fake server answers
// each message with one of the same size.
type relayRig struct {
	app, server net.Conn
	msg, got    []byte
	done        chan struct{}
}

func newRelayRig(tb testing.TB, size int) *relayRig {
	app, clientSide := testkit.LoopbackPair(tb)
	backSide, server := testkit.LoopbackPair(tb)
	ss := &session{srv: &Server{}, conn: sockio.Wrap(clientSide), log: zerolog.Nop()}
	r := &relayRig{app: app, server: server, msg: make([]byte, size), got: make([]byte, size), done: make(chan struct{})}
	go func() {
		ss.relay(sockio.Wrap(backSide), nil)
		close(r.done)
	}()
	r.msg[0] = 'Q'
	binary.BigEndian.PutUint32(r.msg[1:5], uint32(size-1))
	reply := make([]byte, size)
	reply[0] = 'D'
	binary.BigEndian.PutUint32(reply[1:5], uint32(size-1))
	go func() {
		in := make([]byte, size)
		for {
			if _, err := io.ReadFull(server, in); err != nil {
				return
			}
			if _, err := server.Write(reply); err != nil {
				return
			}
		}
	}()
	return r
}

// roundTrip sends one message through the relay and reads the answer.
func (r *relayRig) roundTrip() error {
	if _, err := r.app.Write(r.msg); err != nil {
		return err
	}
	_, err := io.ReadFull(r.app, r.got)
	return err
}

func (r *relayRig) close() {
	r.app.Close()
	r.server.Close()
	<-r.done
}

// BenchmarkRelay sends one message of each size from a client through the
// relay to a fake backend, which answers with a message of the same size:
// a round trip per op, over loopback TCP both ways, as in production.
func BenchmarkRelay(b *testing.B) {
	for _, size := range []int{10, 100, 8 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			r := newRelayRig(b, size)
			b.SetBytes(int64(2 * size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := r.roundTrip(); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			r.close()
		})
	}
}

// The relay allocates nothing per message in steady state, in either
// direction, small or large: a count, not a timing, so it holds on any
// machine.
func TestRelayAllocatesNothingPerMessage(t *testing.T) {
	for _, size := range []int{10, 8 << 10, 256 << 10} {
		r := newRelayRig(t, size)
		for range 50 { // warm up: buffers taken from the pool, goroutines started
			if err := r.roundTrip(); err != nil {
				t.Fatal(err)
			}
		}
		var rtErr error
		allocs := testing.AllocsPerRun(500, func() {
			if err := r.roundTrip(); err != nil && rtErr == nil {
				rtErr = err
			}
		})
		r.close()
		if rtErr != nil {
			t.Fatal(rtErr)
		}
		if allocs != 0 {
			t.Errorf("%d-byte messages: %.0f allocations per round trip through the relay; want 0", size, allocs)
		}
	}
}

// BenchmarkFramer measures header walking alone: many small messages in one
// buffer, as a pipelined result set arrives.
func BenchmarkFramer(b *testing.B) {
	var buf []byte
	for len(buf) < 32<<10 {
		buf = append(buf, 'D', 0, 0, 0, 20)
		buf = append(buf, make([]byte, 16)...)
	}
	var f framer
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := f.feed(buf, 0); err != nil {
			b.Fatal(err)
		}
	}
}
