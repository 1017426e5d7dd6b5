package wire

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"time"

	"github.com/querycop/querycop/backend"
)

// Cancel keys: each session gets a random key of the gateway's own at
// handoff (never a backend's), and a CancelRequest bearing it is forwarded
// to whichever backend that session holds at the time, if any. A request
// still waiting for a backend is cancelled in cancelwait.go instead.

// cancelKey is the BackendKeyData the gateway gave a client. Protocol 3.0
// keys are 4 bytes; the gateway never issues longer ones.
type cancelKey struct {
	pid    uint32
	secret uint32
}

// register gives ss a fresh random cancel key.
func (s *Server) register(ss *session) cancelKey {
	var b [8]byte
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		_, _ = rand.Read(b[:])
		key := cancelKey{pid: binary.BigEndian.Uint32(b[:4]) &^ (1 << 31), secret: binary.BigEndian.Uint32(b[4:])}
		if key.pid == 0 {
			continue
		}
		if _, taken := s.byKey[key]; !taken {
			s.byKey[key] = ss
			return key
		}
	}
}

func (s *Server) lookup(key cancelKey) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byKey[key]
}

// forwardCancel passes a CancelRequest bearing one of our keys to the
// backend that session is using. Unknown keys are ignored, as PostgreSQL
// does, so a guesser learns nothing.
func (ss *session) forwardCancel(body []byte) {
	if len(body) != 8 {
		ss.log.Debug().Msg("cancel request with an unknown key format ignored")
		return
	}
	key := cancelKey{pid: binary.BigEndian.Uint32(body[:4]), secret: binary.BigEndian.Uint32(body[4:])}
	target := ss.srv.lookup(key)
	if target == nil {
		ss.log.Debug().Msg("cancel request for an unknown key ignored")
		return
	}
	if target.cancelWaiting() {
		target.log.Info().Msg("cancel request: the request waiting for a backend is cancelled, never sent")
		return
	}
	lease := target.lease.Load()
	if lease == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ss.srv.ctx, 10*time.Second)
	defer cancel()
	// In transaction mode the backend goes back to the pool when the
	// transaction ends; by the time the cancel connection is open it may
	// be running another client's query, which must not be cancelled.
	// Once sent, the backend is not lent to anyone else until the server
	// has delivered the cancel (see attachedLease).
	counted := false
	sent, err := lease.Conn().CancelIf(ctx, func() bool {
		counted = target.lease.beginCancel(lease)
		return counted
	})
	if counted {
		target.lease.endCancel(!errors.Is(err, backend.ErrCancelUnconfirmed))
	}
	switch {
	case errors.Is(err, backend.ErrCancelUnconfirmed):
		target.log.Warn().Err(err).Msg("cancel request not confirmed by the server in time: that backend connection will be closed, not reused")
	case err != nil:
		target.log.Warn().Err(err).Msg("forwarding cancel request failed")
	case !sent:
		target.log.Debug().Msg("cancel request not forwarded: the client no longer holds that backend")
	default:
		target.log.Info().Msg("cancel request forwarded")
	}
}
