package token

import "time"

// Config is the token command's part of the environment. It is nested
// under the backend's prefix, so CMD reads GATEKEEPER_BACKEND_TOKEN_CMD.
type Config struct {
	// Cmd is run through `sh -c`; its trimmed stdout is the credential.
	// Empty means pass-through mode: the client's own password is used.
	Cmd string `env:"CMD" help:"shell command whose stdout is the backend password (token mode); empty = use the client's password"`
	// Timeout bounds one run of Cmd; the whole process group is killed when it fires.
	Timeout time.Duration `env:"TIMEOUT" envDefault:"30s" help:"how long one run of the token command may take before its process group is killed (and one call of a built-in provider before it is given up)"`
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

	// Provider names where tokens come from; see provider.go. Empty means
	// "command" when Cmd is set and pass-through mode otherwise.
	Provider string `env:"PROVIDER" help:"where backend tokens come from: command (the default when GATEKEEPER_BACKEND_TOKEN_CMD is set), azure, aws-rds or gcp; unset without a command = pass-through mode"`
	// AzureClientID selects a user-assigned managed identity (or the
	// workload identity's client) for the azure provider.
	AzureClientID string `env:"AZURE_CLIENT_ID" help:"azure provider: client ID of the user-assigned managed identity or workload identity to use (default: AZURE_CLIENT_ID, else the system-assigned identity)"`
	// AWSRegion is the region RDS IAM tokens are signed for.
	AWSRegion string `env:"AWS_REGION" help:"aws-rds provider: region the token is signed for (default: the AWS SDK's own resolution: AWS_REGION, AWS_DEFAULT_REGION, the shared config profile)"`
	// GCPScopes are the OAuth scopes asked for by the gcp provider.
	GCPScopes string `env:"GCP_SCOPES" envDefault:"https://www.googleapis.com/auth/sqlservice.login https://www.googleapis.com/auth/alloydb.login" help:"gcp provider: OAuth scopes of the access token, separated by spaces or commas; the default is accepted by Cloud SQL and AlloyDB IAM login"`
}
