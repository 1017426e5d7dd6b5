package token

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/rds/auth"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

// RDSTokenLifetime is how long an RDS IAM authentication token is valid:
// the presigned URL says X-Amz-Expires=900.
const RDSTokenLifetime = 15 * time.Minute

// minCredsLife is how long role credentials must still be valid to sign
// with them; with less left they are fetched afresh.
const minCredsLife = 5 * time.Minute

// awsRDSProvider signs RDS IAM authentication tokens in-process with the
// SDK's default credential chain: environment, shared config and SSO, web
// identity (EKS IRSA), EKS Pod Identity and ECS container credentials, EC2
// instance roles. Signing is local; only fetching credentials may go out.
type awsRDSProvider struct {
	cfg aws.Config
}

func newAWSRDS(ctx context.Context, c Config) (*awsRDSProvider, error) {
	var opts []func(*config.LoadOptions) error
	if c.AWSRegion != "" {
		opts = append(opts, config.WithRegion(c.AWSRegion))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("aws-rds provider: loading the AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		return nil, fmt.Errorf("aws-rds provider: no AWS region: set %s (or AWS_REGION) to the region of the database, e.g. eu-west-1", envAWSRegion)
	}
	return &awsRDSProvider{cfg: cfg}, nil
}

func (p *awsRDSProvider) ProviderName() string { return ProviderAWSRDS }

// Region is the region tokens are signed for.
func (p *awsRDSProvider) Region() string { return p.cfg.Region }

// Mint implements Minter.
func (p *awsRDSProvider) Mint(ctx context.Context, t Target) (string, error) {
	v, _, err := p.MintTimed(ctx, t)
	return v, err
}

// MintTimed signs a token for the host and port the gateway dials and the
// database user t.User. It lasts 15 minutes, or less when the credentials
// that signed it expire sooner (a signature is worthless after that).
func (p *awsRDSProvider) MintTimed(ctx context.Context, t Target) (string, time.Time, error) {
	if p.cfg.Credentials == nil {
		return "", time.Time{}, providerError(ProviderAWSRDS, errors.New("no AWS credentials found (environment, shared config, web identity, container or instance role)"))
	}
	creds, err := p.cfg.Credentials.Retrieve(ctx)
	if err != nil {
		return "", time.Time{}, providerError(ProviderAWSRDS, fmt.Errorf("getting AWS credentials: %w", err))
	}
	// The SDK's cache hands out role credentials until the moment they
	// expire, and a token is worth nothing after its credentials expire: a
	// token signed in their last minutes could not be used. Fetch fresh
	// ones instead (IRSA, ECS and instance roles all allow it).
	if inv, ok := p.cfg.Credentials.(interface{ Invalidate() }); ok && creds.CanExpire && time.Until(creds.Expires) < minCredsLife {
		inv.Invalidate()
		if creds, err = p.cfg.Credentials.Retrieve(ctx); err != nil {
			return "", time.Time{}, providerError(ProviderAWSRDS, fmt.Errorf("getting AWS credentials: %w", err))
		}
	}
	start := time.Now()
	endpoint := net.JoinHostPort(t.Host, strconv.Itoa(t.Port))
	static := aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) { return creds, nil })
	tok, err := auth.BuildAuthToken(ctx, endpoint, p.cfg.Region, t.User, static)
	if err != nil {
		return "", time.Time{}, providerError(ProviderAWSRDS, fmt.Errorf("signing the token: %w", err))
	}
	expiry := start.Add(RDSTokenLifetime)
	if creds.CanExpire && creds.Expires.Before(expiry) {
		expiry = creds.Expires
	}
	return tok, expiry, nil
}

// Identity says which AWS principal signs the tokens. It asks STS
// (GetCallerIdentity, which needs no permission); when STS cannot be
// reached it falls back to the access key ID alone, which is not secret.
func (p *awsRDSProvider) Identity(ctx context.Context, _ string) (string, error) {
	if p.cfg.Credentials == nil {
		return "", errors.New("no AWS credentials found")
	}
	creds, err := p.cfg.Credentials.Retrieve(ctx)
	if err != nil {
		return "", err
	}
	id := fmt.Sprintf("access key %s (%s), region %s", creds.AccessKeyID, creds.Source, p.cfg.Region)
	out, err := sts.NewFromConfig(p.cfg).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		return id + "; account and principal unknown: " + oneLine(err.Error(), 200), nil
	}
	return fmt.Sprintf("account %s, principal %s; %s", aws.ToString(out.Account), aws.ToString(out.Arn), id), nil
}
