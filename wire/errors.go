package wire

import (
	"errors"

	"github.com/querycop/querycop/internal/reasons"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/pool"
	"github.com/querycop/querycop/token"
)

// SQLSTATEs used by the gateway itself
// (https://www.postgresql.org/docs/current/errcodes-appendix.html).
const (
	codeProtocolViolation    = "08P01"
	codeCannotConnect        = "08001"
	codeConnectionFailure    = "08006"
	codeFeatureNotSupported  = "0A000"
	codeInvalidAuthorization = "28000"
	codeInvalidPassword      = "28P01"
	codeTooManyConnections   = "53300"
	codeAdminShutdown        = "57P01"
	codeCannotConnectNow     = "57P03"
)

func fatal(code, msg string) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg}
}

// backendErrorResponse turns a failure to get a backend into what the client
// sees: the server's own error unchanged, or a FATAL with the documented
// text. reason is the short close reason for the log and metrics.
func backendErrorResponse(err error) (resp *pgproto3.ErrorResponse, reason reasons.Reason) {
	var pgErr *pgconn.PgError
	var tokErr *token.Error
	var tlsErr *backend.TLSError
	var timeoutErr *pool.AcquireTimeoutError
	var pausedErr *pool.PausedError
	var poolsErr *pool.TooManyPoolsError
	switch {
	case errors.As(err, &poolsErr):
		return fatal(codeTooManyConnections, poolsErr.Error()), reasons.MaxPools
	case errors.As(err, &timeoutErr):
		return fatal(codeTooManyConnections, timeoutErr.Error()), reasons.AcquireTimeout
	case errors.As(err, &pausedErr):
		return fatal(codeCannotConnectNow, pausedErr.Error()), reasons.Paused
	case errors.As(err, &pgErr):
		return fromPgError(pgErr), reasons.BackendRefused
	case errors.As(err, &tokErr):
		return fatal(codeCannotConnect, tokErr.Error()), reasons.TokenFailed
	case errors.As(err, &tlsErr):
		return fatal(codeCannotConnect, tlsErr.Error()), reasons.BackendTLS
	default:
		return fatal(codeCannotConnect, err.Error()), reasons.BackendDown
	}
}

func fromPgError(e *pgconn.PgError) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{
		Severity:            e.Severity,
		SeverityUnlocalized: e.SeverityUnlocalized,
		Code:                e.Code,
		Message:             e.Message,
		Detail:              e.Detail,
		Hint:                e.Hint,
		Position:            e.Position,
		InternalPosition:    e.InternalPosition,
		InternalQuery:       e.InternalQuery,
		Where:               e.Where,
		SchemaName:          e.SchemaName,
		TableName:           e.TableName,
		ColumnName:          e.ColumnName,
		DataTypeName:        e.DataTypeName,
		ConstraintName:      e.ConstraintName,
		File:                e.File,
		Line:                e.Line,
		Routine:             e.Routine,
	}
}

// reasonOf is the close reason for a failure to get a backend.
func reasonOf(err error) reasons.Reason {
	_, reason := backendErrorResponse(err)
	return reason
}

// loginRefused reports whether the server refused a client's login: a bad
// password or role (class 28) or a database that does not exist.
func loginRefused(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "3D000" || len(pgErr.Code) == 5 && pgErr.Code[:2] == "28")
}
