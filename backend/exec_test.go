package backend

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Exec against a scripted server: the server reads the query, then writes
// answer in the chunks given (a chunk per write, so a read can end
// anywhere in a message), then whatever follows. Returns Exec's results and
// what the connection holds afterwards for the relay (read within 50 ms).
func execScripted(t *testing.T, chunks ...[]byte) (status byte, c *Conn, rest []byte, err error) {
	t.Helper()
	client, server := net.Pipe()
	t.Cleanup(func() { client.Close(); server.Close() })
	c = NewConn(client, 1, map[string]string{"application_name": "before"}, time.Time{})
	go func() {
		fe := pgproto3.NewBackend(server, server)
		if _, err := fe.Receive(); err != nil {
			return
		}
		for _, ch := range chunks {
			if _, err := server.Write(ch); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	status, err = c.Exec(ctx, "select 1")
	_ = client.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 1024)
	n, _ := client.Read(buf)
	_ = client.SetReadDeadline(time.Time{})
	return status, c, buf[:n], err
}

func encode(t *testing.T, msgs ...pgproto3.BackendMessage) []byte {
	t.Helper()
	var out []byte
	for _, m := range msgs {
		var err error
		if out, err = m.Encode(out); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// oneByteChunks splits b into writes of one byte each.
func oneByteChunks(b []byte) [][]byte {
	out := make([][]byte, len(b))
	for i := range b {
		out[i] = b[i : i+1]
	}
	return out
}

func TestExecReadsAnswersHoweverTheyArrive(t *testing.T) {
	answer := func(t *testing.T) []byte {
		return encode(t,
			&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("set_config")}}},
			&pgproto3.DataRow{Values: [][]byte{[]byte("pgbench")}},
			&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
			&pgproto3.ParameterStatus{Name: "application_name", Value: "pgbench"},
			&pgproto3.ReadyForQuery{TxStatus: 'I'})
	}
	for _, tc := range []struct {
		name   string
		chunks func(a []byte) [][]byte
	}{
		{"in one write", func(a []byte) [][]byte { return [][]byte{a} }},
		{"a byte at a time", oneByteChunks},
		{"split inside a header", func(a []byte) [][]byte { return [][]byte{a[:3], a[3:]} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, c, rest, err := execScripted(t, tc.chunks(answer(t))...)
			if err != nil || status != 'I' {
				t.Fatalf("Exec: status %q, %v; want 'I', nil", status, err)
			}
			if got := c.ParameterStatus()["application_name"]; got != "pgbench" {
				t.Errorf("application_name = %q, want the server's report, pgbench", got)
			}
			if len(rest) != 0 {
				t.Errorf("%d bytes left for the relay, want none", len(rest))
			}
		})
	}
}

// What the server sends unasked may arrive in the same read as the
// answer's ReadyForQuery: it is consumed (parameters kept), so the relay
// starts at a message boundary and nothing of it reaches the next client.
func TestExecConsumesWhatTheServerSendsUnaskedAfterTheAnswer(t *testing.T) {
	answer := encode(t, &pgproto3.CommandComplete{CommandTag: []byte("DISCARD ALL")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	unasked := encode(t,
		&pgproto3.ParameterStatus{Name: "TimeZone", Value: "UTC"},
		&pgproto3.NoticeResponse{Severity: "NOTICE", Message: "hello"},
		&pgproto3.NotificationResponse{PID: 7, Channel: "ch", Payload: "p"})
	both := append(append([]byte{}, answer...), unasked...)
	// The unasked messages in the same write, and split so that the read
	// that ends the answer holds only part of one.
	for name, chunks := range map[string][][]byte{
		"same write":       {both},
		"split after":      {both[:len(answer)+3], both[len(answer)+3:]},
		"split mid-notice": {both[:len(answer)+20], both[len(answer)+20:]},
	} {
		t.Run(name, func(t *testing.T) {
			status, c, rest, err := execScripted(t, chunks...)
			if err != nil || status != 'I' {
				t.Fatalf("Exec: status %q, %v; want 'I', nil", status, err)
			}
			if got := c.ParameterStatus()["TimeZone"]; got != "UTC" {
				t.Errorf("TimeZone = %q, want UTC from the report after ReadyForQuery", got)
			}
			if len(rest) != 0 {
				t.Errorf("%d bytes left for the relay: %q", len(rest), rest)
			}
		})
	}
}

func TestExecRefusesAConnectionOutOfStep(t *testing.T) {
	answer := encode(t, &pgproto3.CommandComplete{CommandTag: []byte("SET")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	t.Run("a result after ReadyForQuery", func(t *testing.T) {
		extra := encode(t, &pgproto3.DataRow{Values: [][]byte{[]byte("x")}})
		if _, _, _, err := execScripted(t, append(answer, extra...)); err == nil || !strings.Contains(err.Error(), "after ReadyForQuery") {
			t.Errorf("Exec: %v, want an error naming the message after ReadyForQuery", err)
		}
	})
	t.Run("an invalid length", func(t *testing.T) {
		bad := []byte{'C', 0, 0, 0, 2}
		if _, _, _, err := execScripted(t, bad); err == nil || !strings.Contains(err.Error(), "invalid message length") {
			t.Errorf("Exec: %v, want an invalid message length", err)
		}
	})
	t.Run("a length over the bound", func(t *testing.T) {
		huge := []byte{'E', 0x10, 0, 0, 0}
		if _, _, _, err := execScripted(t, huge); err == nil || !strings.Contains(err.Error(), "invalid message length") {
			t.Errorf("Exec: %v, want an invalid message length", err)
		}
	})
	t.Run("the server closes mid-message", func(t *testing.T) {
		client, server := net.Pipe()
		defer client.Close()
		c := NewConn(client, 1, map[string]string{}, time.Time{})
		go func() {
			fe := pgproto3.NewBackend(server, server)
			_, _ = fe.Receive()
			_, _ = server.Write(answer[:4])
			server.Close()
		}()
		if _, err := c.Exec(context.Background(), "set x = 1"); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("Exec: %v, want io.ErrUnexpectedEOF", err)
		}
	})
}

// An error message longer than the read buffer arrives whole.
func TestExecReadsALongError(t *testing.T) {
	long := strings.Repeat("x", 3*controlBufSize)
	answer := encode(t,
		&pgproto3.ErrorResponse{Severity: "ERROR", Code: "22023", Message: long},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	status, _, rest, err := execScripted(t, answer[:100], answer[100:])
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22023" || pgErr.Message != long || status != 'I' {
		t.Fatalf("Exec: status %q, %v; want 'I' and the 22023 error whole", status, err)
	}
	if len(rest) != 0 {
		t.Errorf("%d bytes left for the relay", len(rest))
	}
}

// fakeServerEnd reads the gateway's messages; on Terminate it runs then.
func fakeServerEnd(t *testing.T, server net.Conn, then func()) {
	t.Helper()
	go func() {
		be := pgproto3.NewBackend(server, server)
		for {
			msg, err := be.Receive()
			if err != nil {
				return
			}
			if _, ok := msg.(*pgproto3.Terminate); ok {
				then()
				return
			}
		}
	}()
}

func TestTerminateWaitsForTheServerToGo(t *testing.T) {
	t.Run("an idle server exits", func(t *testing.T) {
		client, server := net.Pipe()
		c := NewConn(client, 1, map[string]string{}, time.Time{})
		fakeServerEnd(t, server, func() { server.Close() })
		if !c.Terminate(5 * time.Second) {
			t.Fatal("Terminate: the wait is not over after the server closed")
		}
	})
	t.Run("a busy server exits when its statement ends", func(t *testing.T) {
		client, server := net.Pipe()
		c := NewConn(client, 1, map[string]string{}, time.Time{})
		statementEnds := make(chan struct{})
		fakeServerEnd(t, server, func() { <-statementEnds; server.Close() })
		if c.Terminate(50 * time.Millisecond) {
			t.Fatal("Terminate: the wait is over while the server runs on")
		}
		gone := make(chan bool, 1)
		go func() { gone <- c.AwaitGone(make(chan struct{})) }()
		select {
		case <-gone:
			t.Fatal("AwaitGone returned while the server runs on")
		case <-time.After(100 * time.Millisecond):
		}
		close(statementEnds)
		if !<-gone {
			t.Error("AwaitGone: not gone after the server closed")
		}
	})
	t.Run("the pools close first", func(t *testing.T) {
		client, server := net.Pipe()
		defer server.Close()
		c := NewConn(client, 1, map[string]string{}, time.Time{})
		fakeServerEnd(t, server, func() { select {} })
		if c.Terminate(10 * time.Millisecond) {
			t.Fatal("Terminate: over while the server runs on")
		}
		stop := make(chan struct{})
		close(stop)
		if c.AwaitGone(stop) {
			t.Error("AwaitGone after stop: reports the server gone")
		}
	})
	t.Run("a server still sending results is cut off", func(t *testing.T) {
		client, server := net.Pipe()
		defer server.Close()
		c := NewConn(client, 1, map[string]string{}, time.Time{})
		go func() { _, _ = io.Copy(io.Discard, server) }() // it reads the Terminate, in its turn
		go func() {
			// Results of queries the client queued before it left: far more
			// than anyone should read to see the server out.
			chunk := make([]byte, 64<<10)
			for range 1000 {
				if _, err := server.Write(chunk); err != nil {
					return
				}
			}
		}()
		if !c.Terminate(time.Minute) {
			t.Fatal("Terminate: the wait is not over")
		}
		if c.drained < terminateDrain || c.drained > 2*terminateDrain {
			t.Errorf("read %d bytes of results before cutting the server off, want just over %d", c.drained, terminateDrain)
		}
	})
}
