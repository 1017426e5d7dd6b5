package wire

import (
	"errors"
	"io"
	"net"
	"os"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/internal/reasons"
)

// Refusals: how a client that gets no session is told (when the protocol
// still allows an answer), counted and logged, each with its reason.

// refuse tells the client why it gets no backend, and logs it once.
func (ss *session) refuse(err error) {
	resp, reason := backendErrorResponse(err)
	ss.srv.uncount(ss)
	ss.srv.counters.refuse(reason)
	ev := ss.log.Warn()
	if reason == reasons.BackendRefused || reason == reasons.AcquireTimeout {
		ev = ss.log.Info()
	}
	ev = ss.refusalEvent(ev, reason)
	ev.Str("reason", string(reason)).Str("error", err.Error()).Msg("client refused: no backend connection")
	ss.send(resp)
}

// clientError is a refusal with its own ErrorResponse and close reason.
type clientError struct {
	resp   *pgproto3.ErrorResponse
	reason reasons.Reason
}

func (e *clientError) Error() string { return e.resp.Message }

// failStartup answers a start-up failure where the protocol allows it and
// logs it once.
func (ss *session) failStartup(err error) {
	ss.srv.uncount(ss)
	var ce *clientError
	var pe *protocolError
	var upe *unsupportedProtocolError
	var te *tlsHandshakeError
	var ne net.Error
	switch {
	case errors.Is(err, errProbe):
		ss.srv.counters.probes.Add(1)
		ss.log.Debug().Msg("connection closed without a byte: a TCP probe")
	case errors.Is(err, errClientGone), errors.Is(err, io.EOF):
		ss.log.Debug().Str("reason", string(reasons.ClientGone)).Msg("client left during start-up")
	case errors.As(err, &ce):
		ss.srv.counters.refuse(ce.reason)
		ss.refusalEvent(ss.log.Info(), ce.reason).Str("reason", string(ce.reason)).Str("error", ce.Error()).Msg("client refused")
		ss.send(ce.resp)
	case errors.As(err, &pe):
		ss.srv.counters.refuse(reasons.ProtocolViolation)
		ss.refusalEvent(ss.log.Info(), reasons.ProtocolViolation).Str("reason", string(reasons.ProtocolViolation)).Str("error", pe.Error()).Msg("client refused")
		ss.send(fatal(codeProtocolViolation, pe.Error()))
	case errors.As(err, &upe):
		ss.srv.counters.refuse(reasons.ProtocolViolation)
		ss.refusalEvent(ss.log.Info(), reasons.ProtocolViolation).Str("reason", string(reasons.ProtocolViolation)).Str("error", upe.Error()).Msg("client refused")
		ss.send(fatal(codeFeatureNotSupported, upe.Error()))
	case errors.As(err, &te):
		// Nothing can be sent: the channel is neither plaintext nor TLS.
		ss.srv.counters.refuse(reasons.ClientTLS)
		ss.refusalEvent(ss.log.Info(), reasons.ClientTLS).Str("reason", string(reasons.ClientTLS)).Str("error", te.Error()).Msg("client refused")
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		ss.srv.counters.refuse(reasons.LoginTimeout)
		ss.refusalEvent(ss.log.Info(), reasons.LoginTimeout).Str("reason", string(reasons.LoginTimeout)).Msg("client refused")
		ss.send(fatal(codeProtocolViolation, "start-up not completed within GATEKEEPER_CLIENT_LOGIN_TIMEOUT ("+ss.srv.cfg.LoginTimeout.String()+")"))
	case errors.Is(err, io.ErrUnexpectedEOF):
		ss.srv.counters.refuse(reasons.ProtocolViolation)
		ss.refusalEvent(ss.log.Info(), reasons.ProtocolViolation).Str("reason", string(reasons.ProtocolViolation)).Msg("client sent an incomplete start-up packet")
	default:
		ss.log.Info().Str("reason", string(reasons.ClientGone)).Err(err).Msg("client start-up failed")
	}
}
