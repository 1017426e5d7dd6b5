package token

import "time"

// Config is the token command's part of the environment. It is nested
// under the backend's prefix, so CMD reads GATEKEEPER_BACKEND_TOKEN_CMD.
type Config struct {
	// Cmd is run through `sh -c`; its trimmed stdout is the credential.
	// Empty means pass-through mode: the client's own password is used.
	Cmd string `env:"CMD" help:"shell command whose stdout is the backend password (token mode); empty = use the client's password"`
	// Timeout bounds one run of Cmd; the whole process group is killed when it fires.
	Timeout time.Duration `env:"TIMEOUT" envDefault:"30s" help:"how long one run of the token command may take before its process group is killed"`
}
