package token

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"cloud.google.com/go/compute/metadata"
	"golang.org/x/oauth2/google"
)

// gcpProvider mints Google OAuth access tokens from application default
// credentials: GOOGLE_APPLICATION_CREDENTIALS (a service account key, a
// workload identity federation config), gcloud's application default
// login, then the metadata server (Compute Engine, GKE workload identity,
// Cloud Run). Cloud SQL and AlloyDB IAM logins take the token as password.
type gcpProvider struct {
	scopes []string
	client *http.Client // bounded in time and size: providerHTTPClient
}

func newGCP(cfg Config) (*gcpProvider, error) {
	return &gcpProvider{scopes: gcpScopes(cfg.GCPScopes), client: providerHTTPClient(cfg.Timeout)}, nil
}

// gcpScopes splits the configured scopes on spaces and commas.
func gcpScopes(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
}

func (p *gcpProvider) ProviderName() string { return ProviderGCP }

// Mint implements Minter.
func (p *gcpProvider) Mint(ctx context.Context, t Target) (string, error) {
	v, _, err := p.MintTimed(ctx, t)
	return v, err
}

// MintTimed gets a token for the configured scopes. The credentials are
// looked up afresh for every mint: the oauth2 package caches a token until
// seconds before its expiry, and Source asks again ahead of that on purpose
// (GATEKEEPER_BACKEND_TOKEN_REFRESH_MARGIN), so a client-side cache would
// only hand the old token back. The metadata server keeps its own cache.
func (p *gcpProvider) MintTimed(ctx context.Context, _ Target) (string, time.Time, error) {
	ctx = context.WithValue(ctx, oauth2.HTTPClient, p.client)
	creds, err := google.FindDefaultCredentials(ctx, p.scopes...)
	if err != nil {
		return "", time.Time{}, providerError(ProviderGCP, err)
	}
	if len(creds.JSON) == 0 {
		// The metadata server: asked through our own bounded client, as
		// the oauth2 package's compute token source takes none.
		return p.metadataToken(ctx)
	}
	tok, err := creds.TokenSource.Token()
	if err != nil {
		return "", time.Time{}, providerError(ProviderGCP, err)
	}
	if tok.AccessToken == "" {
		return "", time.Time{}, providerError(ProviderGCP, errors.New("the credentials gave an empty access token"))
	}
	return tok.AccessToken, tok.Expiry, nil
}

// Identity says which Google account the tokens belong to: the service
// account's e-mail from a key file or impersonation URL, or the metadata
// server's default service account.
func (p *gcpProvider) Identity(ctx context.Context, _ string) (string, error) {
	creds, err := google.FindDefaultCredentials(ctx, p.scopes...)
	if err != nil {
		return "", err
	}
	if len(creds.JSON) > 0 {
		var f struct {
			Type           string `json:"type"`
			ClientEmail    string `json:"client_email"`
			Impersonation  string `json:"service_account_impersonation_url"`
			Audience       string `json:"audience"`
			QuotaProjectID string `json:"quota_project_id"`
		}
		if err := json.Unmarshal(creds.JSON, &f); err != nil {
			return "", fmt.Errorf("reading the credentials file: %w", err)
		}
		switch {
		case f.ClientEmail != "":
			return fmt.Sprintf("%s (%s)", f.ClientEmail, f.Type), nil
		case f.Impersonation != "":
			// .../serviceAccounts/NAME@PROJECT.iam.gserviceaccount.com:generateAccessToken
			sa := f.Impersonation[strings.LastIndex(f.Impersonation, "/")+1:]
			sa, _, _ = strings.Cut(sa, ":")
			return fmt.Sprintf("%s (%s, impersonated)", sa, f.Type), nil
		default:
			return fmt.Sprintf("a %s credential whose e-mail the file does not name", f.Type), nil
		}
	}
	if metadata.OnGCE() {
		email, err := metadata.EmailWithContext(ctx, "default")
		if err != nil {
			return "", fmt.Errorf("asking the metadata server for the service account: %w", err)
		}
		return email + " (metadata server)", nil
	}
	return "", errors.New("no credentials found")
}

// metadataToken asks the metadata server for the default service
// account's token, as the oauth2 package's compute token source does.
func (p *gcpProvider) metadataToken(ctx context.Context) (string, time.Time, error) {
	path := "instance/service-accounts/default/token"
	if len(p.scopes) > 0 {
		path += "?scopes=" + url.QueryEscape(strings.Join(p.scopes, ","))
	}
	body, err := metadata.NewClient(p.client).GetWithContext(ctx, path)
	if err != nil {
		return "", time.Time{}, providerError(ProviderGCP, err)
	}
	var r struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return "", time.Time{}, providerError(ProviderGCP, fmt.Errorf("reading the metadata server's token: %w", err))
	}
	if r.AccessToken == "" {
		return "", time.Time{}, providerError(ProviderGCP, errors.New("the metadata server gave an empty access token"))
	}
	var exp time.Time
	if r.ExpiresIn > 0 {
		exp = time.Now().Add(time.Duration(r.ExpiresIn) * time.Second)
	}
	return r.AccessToken, exp, nil
}
