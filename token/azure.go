package token

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// AzureScope is the resource Entra ID tokens for Azure Database for
// PostgreSQL are issued for.
const AzureScope = "https://ossrdbms-aad.database.windows.net/.default"

// imdsAddr is the instance metadata endpoint of an Azure VM; probed before
// managed identity is tried there, so that off Azure (a developer's machine
// with the Azure CLI) the chain does not spend minutes in the SDK's IMDS
// retries before it reaches the CLI.
var imdsAddr = "169.254.169.254:80"

const imdsProbeTimeout = time.Second

// azureProvider mints Entra ID tokens through azidentity: with a workload
// identity (a federated token file, as AKS injects) or a service principal
// in the AZURE_* environment configured, that alone; otherwise managed
// identity (VM, App Service, Container Apps, Arc, ...) and, last, the Azure
// CLI's login. The first one that gives a token is kept for the life of the
// process, as azidentity's own ChainedTokenCredential does: a later failure
// of it is reported, not papered over by a different identity.
type azureProvider struct {
	chain []azureSource

	mu     sync.Mutex
	chosen *azureSource
}

type azureSource struct {
	name  string
	cred  azcore.TokenCredential
	err   error // why it could not be built; it is then skipped
	probe bool  // IMDS must answer first
}

func newAzure(cfg Config) (*azureProvider, error) {
	clientID := cfg.AzureClientID
	if clientID == "" {
		clientID = os.Getenv("AZURE_CLIENT_ID")
	}
	// Instance discovery asks login.microsoftonline.com about the authority;
	// an authority host of another kind (Azure Stack, a private cloud) has
	// no such entry, so discovery is skipped for it, as the SDK advises.
	noDiscovery := customAuthority(os.Getenv("AZURE_AUTHORITY_HOST"))
	p := &azureProvider{}
	// Every identity endpoint is asked through a client whose requests end
	// with the token timeout and whose answers are bounded.
	client := azcore.ClientOptions{Transport: providerHTTPClient(cfg.Timeout)}

	// A source the operator configured explicitly is the only one tried:
	// were a workload identity's exchange to fail and the chain go on, an
	// AKS pod would log in with its node's managed identity, someone else.
	switch {
	case os.Getenv("AZURE_FEDERATED_TOKEN_FILE") != "":
		c, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
			ClientOptions: client, ClientID: clientID, DisableInstanceDiscovery: noDiscovery,
		})
		p.chain = append(p.chain, azureSource{name: "workload identity", cred: c, err: err})
	case os.Getenv("AZURE_CLIENT_SECRET") != "" || os.Getenv("AZURE_CLIENT_CERTIFICATE_PATH") != "":
		c, err := azidentity.NewEnvironmentCredential(&azidentity.EnvironmentCredentialOptions{ClientOptions: client, DisableInstanceDiscovery: noDiscovery})
		p.chain = append(p.chain, azureSource{name: "environment service principal", cred: c, err: err})
	default:
		miOpts := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: client}
		if clientID != "" {
			miOpts.ID = azidentity.ClientID(clientID)
		}
		mi, err := azidentity.NewManagedIdentityCredential(miOpts)
		p.chain = append(p.chain, azureSource{name: "managed identity", cred: mi, err: err, probe: imdsSource()})
		// Last, a developer's `az login`, off Azure.
		cli, err := azidentity.NewAzureCLICredential(nil)
		p.chain = append(p.chain, azureSource{name: "Azure CLI", cred: cli, err: err})
	}
	return p, nil
}

// imdsSource reports whether managed identity would go to the VM's IMDS:
// no App Service, Cloud Shell, Azure ML, Service Fabric or Arc endpoint is
// configured in the environment (the SDK's own order of detection).
func imdsSource() bool {
	for _, v := range []string{"IDENTITY_ENDPOINT", "MSI_ENDPOINT", "IMDS_ENDPOINT"} {
		if os.Getenv(v) != "" {
			return false
		}
	}
	return true
}

// customAuthority reports whether host is set and is not one of the public
// or national Microsoft clouds.
func customAuthority(host string) bool {
	if host == "" {
		return false
	}
	h := host
	if u, err := url.Parse(host); err == nil && u.Host != "" {
		h = u.Hostname()
	}
	switch strings.ToLower(strings.TrimSuffix(h, ".")) {
	case "login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn", "login.windows.net":
		return false
	}
	return true
}

func (p *azureProvider) ProviderName() string { return ProviderAzure }

// Mint implements Minter.
func (p *azureProvider) Mint(ctx context.Context, t Target) (string, error) {
	v, _, err := p.MintTimed(ctx, t)
	return v, err
}

// MintTimed asks the chain for a token for AzureScope. The token does not
// depend on t: Entra ID issues it to the identity, and the database user
// name is whatever the server maps that identity to.
func (p *azureProvider) MintTimed(ctx context.Context, _ Target) (string, time.Time, error) {
	opts := policy.TokenRequestOptions{Scopes: []string{AzureScope}}
	p.mu.Lock()
	chosen := p.chosen
	p.mu.Unlock()
	if chosen != nil {
		tok, err := chosen.cred.GetToken(ctx, opts)
		if err != nil {
			return "", time.Time{}, providerError(ProviderAzure, fmt.Errorf("%s: %w", chosen.name, err))
		}
		return tok.Token, tok.ExpiresOn, nil
	}
	cause := func(name string, err error) string { return name + ": " + sdkCause(err) }

	var errs []string
	for i := range p.chain {
		s := &p.chain[i]
		if s.err != nil {
			errs = append(errs, cause(s.name, s.err))
			continue
		}
		if s.probe && !imdsAnswers(ctx) {
			errs = append(errs, fmt.Sprintf("%s: no instance metadata service at %s (not an Azure VM?)", s.name, imdsAddr))
			continue
		}
		tok, err := s.cred.GetToken(ctx, opts)
		if err != nil {
			if ctx.Err() != nil {
				return "", time.Time{}, providerError(ProviderAzure, fmt.Errorf("%s: %w", s.name, err))
			}
			errs = append(errs, cause(s.name, err))
			continue
		}
		p.mu.Lock()
		p.chosen = s
		p.mu.Unlock()
		return tok.Token, tok.ExpiresOn, nil
	}
	return "", time.Time{}, &Error{Provider: ProviderAzure, Reason: oneLine("no credential gave a token: "+strings.Join(errs, "; "), maxCause)}
}

func imdsAnswers(ctx context.Context) bool {
	d := net.Dialer{Timeout: imdsProbeTimeout}
	c, err := d.DialContext(ctx, "tcp", imdsAddr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Identity says whom an Entra ID token stands for, from its claims (which
// are not verified here: the server does that).
func (p *azureProvider) Identity(_ context.Context, value string) (string, error) {
	claims, err := jwtClaims(value)
	if err != nil {
		return "", err
	}
	str := func(k string) string { s, _ := claims[k].(string); return s }
	var parts []string
	if v := str("oid"); v != "" {
		parts = append(parts, "object ID "+v)
	}
	for _, k := range []string{"upn", "preferred_username", "unique_name"} {
		if v := str(k); v != "" {
			parts = append(parts, k+" "+v)
			break
		}
	}
	if v := str("appid"); v != "" {
		parts = append(parts, "app ID "+v)
	} else if v := str("azp"); v != "" {
		parts = append(parts, "app ID "+v)
	}
	if v := str("tid"); v != "" {
		parts = append(parts, "tenant "+v)
	}
	if len(parts) == 0 {
		return "", errors.New("the token names no object ID, user or app")
	}
	p.mu.Lock()
	if p.chosen != nil {
		parts = append(parts, "through "+p.chosen.name)
	}
	p.mu.Unlock()
	return strings.Join(parts, ", "), nil
}

// jwtClaims decodes a JWT's payload without verifying it.
func jwtClaims(value string) (map[string]any, error) {
	parts := strings.Split(value, ".")
	if len(parts) != 3 {
		return nil, errors.New("the token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return nil, errors.New("the token's payload is not base64url")
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, errors.New("the token's payload is not a JSON object")
	}
	return claims, nil
}
