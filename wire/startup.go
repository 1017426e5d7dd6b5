package wire

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgframe"
	"github.com/querycop/querycop/internal/reasons"
)

const protocol30 = 3 << 16 // PG_PROTOCOL(3, 0)

// Start-up packet bounds: PostgreSQL's MAX_STARTUP_PACKET_LENGTH is 10000,
// and the smallest packet is a length and a code.
const (
	minStartupLen = 8
	maxStartupLen = 10000
)

// protocolError is bad input from the client: it gets a FATAL 08P01 with
// this text, when the protocol still allows an answer.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return e.msg }

func protocolErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

// startupPacket is one packet of the start-up phase, read exactly (no read
// ahead), so nothing the client sends after an SSLRequest can be mistaken
// for data inside TLS (the CVE-2021-23214 class of bug).
type startupPacket struct {
	code uint32
	body []byte // after the code
}

func readStartupPacket(r io.Reader) (startupPacket, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:4]); err != nil {
		return startupPacket{}, err
	}
	length := binary.BigEndian.Uint32(hdr[:4])
	if length < minStartupLen || length > maxStartupLen {
		return startupPacket{}, protocolErrorf("invalid length of startup packet: %d (expected %d to %d bytes)", length, minStartupLen, maxStartupLen)
	}
	if _, err := io.ReadFull(r, hdr[4:8]); err != nil {
		return startupPacket{}, unexpectedEOF(err)
	}
	body := make([]byte, length-8)
	if _, err := io.ReadFull(r, body); err != nil {
		return startupPacket{}, unexpectedEOF(err)
	}
	return startupPacket{code: binary.BigEndian.Uint32(hdr[4:8]), body: body}, nil
}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// startupMessage is a parsed StartupMessage of protocol 3.x.
type startupMessage struct {
	minor  uint16
	params map[string]string
	// pqOptions are protocol extension options ("_pq_.*") that the client
	// asked for; none is supported, so they are reported back as such.
	pqOptions []string
}

// parseStartupMessage parses the key/value pairs after the protocol version,
// for any 3.x (pgproto3's decoder only knows 3.0 and 3.2).
func parseStartupMessage(code uint32, body []byte) (*startupMessage, error) {
	msg := &startupMessage{minor: uint16(code), params: map[string]string{}}
	for {
		if len(body) == 0 {
			return nil, protocolErrorf("invalid startup packet layout: expected terminator as last byte")
		}
		if body[0] == 0 {
			if len(body) != 1 {
				return nil, protocolErrorf("invalid startup packet layout: data after terminator")
			}
			break
		}
		key, rest, ok := cutNUL(body)
		if !ok {
			return nil, protocolErrorf("invalid startup packet layout: expected terminator as last byte")
		}
		value, rest, ok := cutNUL(rest)
		if !ok {
			return nil, protocolErrorf("invalid startup packet layout: missing value for parameter %s", quoteName(key))
		}
		body = rest
		if strings.HasPrefix(key, "_pq_.") {
			msg.pqOptions = append(msg.pqOptions, key)
			continue
		}
		msg.params[key] = value
	}
	return msg, nil
}

func cutNUL(b []byte) (string, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

// readMessage reads one regular protocol message during authentication,
// refusing bodies over max bytes.
func readMessage(r io.Reader, max int) (typ byte, body []byte, err error) {
	var hdr [pgframe.HeaderLen]byte
	size, err := pgframe.ReadHeader(r, hdr[:], max)
	var le *pgframe.LengthError
	if errors.As(err, &le) {
		return 0, nil, &protocolError{msg: le.Error()}
	}
	if err != nil {
		return 0, nil, err
	}
	body = make([]byte, size)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, unexpectedEOF(err)
	}
	return hdr[0], body, nil
}

// quoteName puts a client-supplied name in double quotes as PostgreSQL's
// messages do, with nothing escaped, cut to maxQuoted bytes so a hostile
// client cannot make a log line or an error message kilobytes long.
func quoteName(s string) string {
	return `"` + clip(s) + `"`
}

// maxQuoted is the longest client-supplied value the gateway repeats in a
// message or log line; a longer one is cut, marked with "...".
const maxQuoted = 64

// clip cuts s to maxQuoted bytes, on a UTF-8 boundary.
func clip(s string) string {
	if len(s) <= maxQuoted {
		return s
	}
	i := maxQuoted
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "..."
}

// maxNameLen is PostgreSQL's NAMEDATALEN-1: ProcessStartupPacket cuts
// longer user and database names to it (bytewise).
const maxNameLen = 63

func truncateName(s string) string {
	if len(s) > maxNameLen {
		return s[:maxNameLen]
	}
	return s
}

// startup reads start-up packets until a StartupMessage, answering SSL and
// GSS encryption requests on the way. It returns nil after a CancelRequest.
func (ss *session) startup() (*startupMessage, error) {
	// As PostgreSQL's ProcessStartupPacket: one SSLRequest and one
	// GSSENCRequest at most, and neither inside TLS; a repeat is treated as
	// the unknown protocol version it then is.
	sslDone, gssDone := false, false
	for first := true; ; first = false {
		pkt, err := readStartupPacket(ss.conn)
		if err != nil {
			if first && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
				return nil, errProbe
			}
			return nil, err
		}
		switch {
		case pkt.code == pgframe.SSLRequestCode && !sslDone:
			if len(pkt.body) != 0 {
				return nil, protocolErrorf("invalid length of startup packet")
			}
			sslDone = true
			if ss.srv.tls == nil {
				if _, err := ss.conn.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				continue
			}
			if _, err := ss.conn.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			tc := tls.Server(ss.conn, ss.srv.tls)
			if err := ss.tlsHandshake(tc); err != nil {
				return nil, &tlsHandshakeError{err}
			}
			ss.conn = tc
			shared := net.Conn(tc)
			ss.connShared.Store(&shared)
			ss.tls = true
			gssDone = true
		case pkt.code == pgframe.GSSENCRequestCode && !gssDone:
			if len(pkt.body) != 0 {
				return nil, protocolErrorf("invalid length of startup packet")
			}
			// No GSSAPI encryption; the client goes on in plaintext or TLS.
			gssDone = true
			if _, err := ss.conn.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case pkt.code == pgframe.CancelRequestCode:
			ss.forwardCancel(pkt.body)
			return nil, nil
		case pkt.code>>16 == 3:
			return parseStartupMessage(pkt.code, pkt.body)
		default:
			return nil, &unsupportedProtocolError{major: pkt.code >> 16, minor: pkt.code & 0xffff}
		}
	}
}

type unsupportedProtocolError struct{ major, minor uint32 }

func (e *unsupportedProtocolError) Error() string {
	return fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0 to 3.0", e.major, e.minor)
}

// admit checks the start-up parameters and answers protocol negotiation.
func (ss *session) admit(msg *startupMessage) (backend.Params, []startupSetting, error) {
	// As PostgreSQL does, before the names key anything (pools, logs,
	// metrics): truncated to NAMEDATALEN-1 bytes.
	user := truncateName(msg.params["user"])
	if user == "" {
		return backend.Params{}, nil, &clientError{fatal(codeInvalidAuthorization, "no PostgreSQL user name specified in startup packet"), reasons.BadStartup}
	}
	settings, err := clientSettings(msg.params)
	if err != nil {
		return backend.Params{}, nil, &clientError{fatal(codeFeatureNotSupported, err.Error()), reasons.BadStartup}
	}
	db := truncateName(msg.params["database"])
	if db == "" {
		db = user
	}
	// PostgreSQL answers a newer minor version, or protocol options it does
	// not know, with NegotiateProtocolVersion and goes on with 3.0. Despite
	// the field's documented name it sends the whole version number
	// (PG_PROTOCOL_LATEST, 196608 for 3.0), and libpq 18 and pgjdbc read it
	// so.
	if msg.minor > 0 || len(msg.pqOptions) > 0 {
		buf, err := (&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: protocol30, UnrecognizedOptions: msg.pqOptions}).Encode(nil)
		if err != nil {
			return backend.Params{}, nil, err
		}
		if _, err := ss.conn.Write(buf); err != nil {
			return backend.Params{}, nil, err
		}
	}
	return backend.Params{User: user, Database: db}, settings, nil
}
