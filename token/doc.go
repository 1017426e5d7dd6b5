// Package token owns minting the backend credential: when token mode is
// configured (Config.Cmd is not empty), Querycop authenticates to PostgreSQL
// with a short-lived cloud token, such as an Azure AD access token, that it
// obtains by running the configured shell command and reading its stdout.
//
// Command runs that shell command for one backend Target: through `sh -c`,
// with the gateway's environment plus QUERYCOP_BACKEND_HOST,
// QUERYCOP_BACKEND_PORT, QUERYCOP_BACKEND_USER and QUERYCOP_BACKEND_DATABASE,
// in its own process group, which is killed as a whole when Config.Timeout
// fires or the caller's context is cancelled. Every failure is an *Error whose
// text starts "backend token command failed: " and never contains the token.
//
// Source caches the tokens per (host, port, user) and refreshes them ahead
// of expiry; see its comment for the two clocks of a token.
//
// Concurrency: Command.Mint and Source are safe for concurrent use; each
// Mint runs its own process and shares nothing with other calls.
//
// The package does no logging; callers log the errors it returns.
package token
