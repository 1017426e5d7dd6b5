package wire

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/rs/zerolog"
)

// loopbackPair returns the two ends of a TCP connection on 127.0.0.1.
func loopbackPair(tb testing.TB) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	dialed, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	return dialed, <-accepted
}

// BenchmarkRelay sends one message of each size from a client through the
// relay to a fake backend, which answers with a message of the same size:
// a round trip per op, over loopback TCP both ways, as in production.
func BenchmarkRelay(b *testing.B) {
	for _, size := range []int{10, 100, 8 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			app, clientSide := loopbackPair(b)
			backSide, server := loopbackPair(b)
			ss := &session{srv: &Server{}, conn: clientSide, log: zerolog.Nop()}
			done := make(chan struct{})
			go func() {
				ss.relay(backSide, nil)
				close(done)
			}()
			msg := make([]byte, size)
			msg[0] = 'Q'
			binary.BigEndian.PutUint32(msg[1:5], uint32(size-1))
			reply := make([]byte, size)
			reply[0] = 'D'
			binary.BigEndian.PutUint32(reply[1:5], uint32(size-1))
			// The fake server: read a message, answer one of the same size.
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
			got := make([]byte, size)
			b.SetBytes(int64(2 * size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := app.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(app, got); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			app.Close()
			server.Close()
			<-done
		})
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
