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
	// Lifetime is assumed for tokens that carry no expiry of their own.
	Lifetime time.Duration `env:"LIFETIME" envDefault:"15m" help:"lifetime assumed for opaque tokens (JWTs carry their own exp), e.g. AWS RDS IAM tokens last 15m"`
	// RefreshMargin is how long before expiry asking the command for a new
	// token starts. The current token keeps serving new backend logins
	// until its expiry less Source.LoginSafety, so a command that hands
	// back its cached token for a while (az does until 5 minutes are left)
	// is simply asked again later.
	RefreshMargin time.Duration `env:"REFRESH_MARGIN" envDefault:"5m" help:"how long before a token expires Querycop starts asking the command for a new one; the current token keeps serving new backend connections until its expiry less the connect timeout and 30s"`
	// Reuse shares one token among connections until it nears expiry;
	// false mints one per backend connection.
	Reuse bool `env:"REUSE" envDefault:"true" help:"reuse one token for many backend connections (false: run the command for every new backend connection)"`
}
