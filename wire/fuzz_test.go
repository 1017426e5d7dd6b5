package wire

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/internal/pgframe"
)

// The fuzz targets feed the parsers everything a hostile client could
// send. Seeds live in testdata/fuzz; `go test -fuzz` adds what it finds.

func FuzzStartupPacket(f *testing.F) {
	startup := binary.BigEndian.AppendUint32(nil, 3<<16)
	startup = append(startup, "user\x00alice\x00database\x00db\x00options\x00-c a=b\x00\x00"...)
	f.Add(append(binary.BigEndian.AppendUint32(nil, uint32(len(startup)+4)), startup...))
	f.Add([]byte{0, 0, 0, 8, 4, 210, 22, 47})                          // SSLRequest
	f.Add([]byte{0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 1, 0, 0, 0, 2}) // CancelRequest
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pkt, err := readStartupPacket(bytes.NewReader(data))
		if err != nil {
			return
		}
		if len(pkt.body)+8 > maxStartupLen {
			t.Fatalf("accepted a %d-byte packet", len(pkt.body)+8)
		}
		if pkt.code>>16 == 3 {
			if msg, err := parseStartupMessage(pkt.code, pkt.body); err == nil {
				_, _ = clientSettings(msg.params)
			}
		}
	})
}

func FuzzFramer(f *testing.F) {
	f.Add([]byte("Q\x00\x00\x00\x0dselect 1\x00X\x00\x00\x00\x04"), 3)
	f.Add([]byte("Z\x00\x00\x00\x05IZ\x00\x00\x00\x05T"), 1)
	f.Add([]byte{'D', 0xff, 0xff, 0xff, 0xff}, 2)
	f.Fuzz(func(t *testing.T, stream []byte, chunk int) {
		if chunk <= 0 {
			chunk = 1
		}
		// The framer must reach the same verdict however the stream is cut.
		var whole, cut framer
		whole.maxLen, cut.maxLen = 1<<20, 1<<20
		stopWhole, errWhole := whole.feed(stream, 'X')
		stopCut, errCut := -1, error(nil)
		for i := 0; i < len(stream) && errCut == nil && stopCut < 0; i += chunk {
			end := min(i+chunk, len(stream))
			var at int
			at, errCut = cut.feed(stream[i:end], 'X')
			if at >= 0 {
				stopCut = i + at
			}
		}
		if (errWhole == nil) != (errCut == nil) || stopWhole != stopCut {
			t.Fatalf("whole: stop %d err %v; in chunks of %d: stop %d err %v", stopWhole, errWhole, chunk, stopCut, errCut)
		}
		if errWhole == nil && stopWhole < 0 && (whole.txStatus != cut.txStatus || whole.answered != cut.answered) {
			t.Fatalf("state differs: %+v vs %+v", whole, cut)
		}
	})
}

func FuzzParseAuthFile(f *testing.F) {
	f.Add(`"alice" "SCRAM-SHA-256$4096:c2FsdA==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:Uw8WjnlHhRVfdzXTYBXWCt+0XbIqAcwHZXeFvp7MqZ0="` + "\n" + `"bob" "md5a3556571e93b0d20722ba62be61e8c2d"`)
	f.Add(`; comment` + "\n" + `"we""ird" "pa""ss"`)
	f.Add(`"unterminated`)
	f.Fuzz(func(t *testing.T, file string) {
		users, err := parseAuthFile(strings.NewReader(file))
		if err != nil {
			return
		}
		for name, e := range users {
			if name == "" || (e.scram == nil && e.md5 == "") {
				t.Fatalf("bad entry for %q: %+v", name, e)
			}
		}
	})
}

func FuzzTransactionMessages(f *testing.F) {
	f.Add([]byte("s1\x00select $1\x00\x00\x01\x00\x00\x00\x17"))
	f.Add([]byte("\x00s1\x00\x00\x00\x00\x00\x00\x00"))
	f.Add([]byte("SET search_path = a, b"))
	f.Fuzz(func(t *testing.T, body []byte) {
		if name, query, rest, ok := splitParse(body); ok {
			out := appendParse(nil, string(name), query, rest)
			if typ, got, n := pgframe.Next(out); typ != 'P' || n != len(out) || !bytes.Equal(got, body) {
				t.Fatalf("Parse does not round-trip: %q", body)
			}
		}
		if portal, stmt, rest, ok := splitBind(body); ok {
			out := appendBind(nil, portal, string(stmt), rest)
			if _, got, _ := pgframe.Next(out); !bytes.Equal(got, body) {
				t.Fatalf("Bind does not round-trip: %q", body)
			}
		}
		var sc sqlScanner
		_ = analyzeQuery(&sc, string(body), true)
	})
}

// FuzzSQLScan feeds the statement lexer arbitrary text: it must not panic,
// its tokens must lie inside the text in order, and a statement's text
// must lex to the same tokens on its own (so a replayed SET is the
// statement the client sent, and nothing after it).
func FuzzSQLScan(f *testing.F) {
	for _, seed := range []string{
		"SET search_path = x -- note", "set application_name = 'a;b'", "select 1; listen foo",
		"do $$begin execute 'listen foo'; end$$", "/* a /* nested */ comment */ set x.y to 1",
		"select $1::int, $tag$ ; $tag$, E'\\'' ; reset all", `SET "search_path" = x`, "select 'unterminated",
		"create temp table t(a int)", "select * into temporary t from x", "U&\"d\\0061t\\+000061\" ; set time zone 'UTC'",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, q string) {
		stmts := splitStatements(q)
		last := 0
		for _, st := range stmts {
			if len(st.tokens) == 0 || st.start < last || st.end > len(q) || st.start > st.end {
				t.Fatalf("statement span %d..%d out of order in %q", st.start, st.end, q)
			}
			for _, tk := range st.tokens {
				if tk.start < last || tk.end > len(q) || tk.start >= tk.end {
					t.Fatalf("token %d..%d out of order in %q", tk.start, tk.end, q)
				}
				last = tk.end
			}
			again := splitStatements(st.text())
			if len(again) != 1 || len(again[0].tokens) != len(st.tokens) {
				t.Fatalf("statement %q of %q lexes differently on its own: %d statements", st.text(), q, len(again))
			}
			for i, tk := range st.tokens {
				if tk.kind == tokString || tk.kind == tokIdent {
					_ = st.contents(i)
				}
			}
		}
		var sc sqlScanner
		_ = analyzeQuery(&sc, q, true)
		_ = analyzeQuery(&sc, q, false)
	})
}

// FuzzSCRAMServer plays a client sending arbitrary SCRAM messages to the
// gateway's server side: it must fail cleanly, never hang or panic. Each
// input runs twice: on a plaintext session, and on a TLS session where
// SCRAM-SHA-256-PLUS is offered and chosen when the message asks for
// channel binding.
func FuzzSCRAMServer(f *testing.F) {
	f.Add("n,,n=,r=rOprNGfwEbeRWgbNEkqO", "c=biws,r=rOprNGfwEbeRWgbNEkqO,p=dHpbaFqbVeDx84bIsakJ2RD1rqVO0k2tSd5vvEgXMNc=")
	f.Add("y,,n=,r=abc", "c=eSws,r=abc,p=")
	f.Add("p=tls-server-end-point,,n=,r=x", "")
	cert := testCert(f)
	f.Fuzz(func(t *testing.T, first, final string) {
		for _, withTLS := range []bool{false, true} {
			fuzzSCRAMOnce(t, first, final, withTLS, cert)
		}
	})
}

func fuzzSCRAMOnce(t *testing.T, first, final string, withTLS bool, cert *tls.Certificate) {
	server, client := net.Pipe()
	defer client.Close()
	ss := &session{srv: &Server{}, conn: server, log: zerolog.Nop()}
	mechanism := scramMechanism
	if withTLS {
		ss.tls, ss.tlsCert = true, cert
		if strings.HasPrefix(first, "p=") {
			mechanism = scramPlusMechanism
		}
	}
	v, _ := deriveSCRAMVerifier("secret", []byte("salt"), 1)
	done := make(chan error, 1)
	go func() {
		_, err := ss.scramExchange(v)
		done <- err
		server.Close()
	}()
	_ = client.SetDeadline(time.Now().Add(5 * time.Second))
	fe := pgproto3.NewFrontend(client, client)
	if _, err := fe.Receive(); err != nil { // AuthenticationSASL
		t.Fatal(err)
	}
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: mechanism, Data: []byte(first)})
	if fe.Flush() == nil {
		if msg, err := fe.Receive(); err == nil {
			if _, ok := msg.(*pgproto3.AuthenticationSASLContinue); ok {
				fe.Send(&pgproto3.SASLResponse{Data: []byte(final)})
				_ = fe.Flush()
				_, _ = fe.Receive()
			}
		}
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("random proof accepted (TLS %v): %q / %q", withTLS, first, final)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("SCRAM exchange hung")
	}
}
