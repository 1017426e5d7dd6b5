package token

import (
	"errors"
	"io"
	"net/http"
	"time"
)

// maxProviderResponse bounds the body of any identity endpoint's answer: a
// token response is a few kilobytes; an endpoint that streams without end
// must not fill the gateway's memory.
const maxProviderResponse = 1 << 20

var errProviderResponseTooLarge = errors.New("the identity endpoint's response is larger than 1 MiB")

// providerHTTPClient is the HTTP client the built-in providers' SDKs use:
// each request, body included, ends within timeout (the token timeout), so
// a timed-out mint leaves no request behind, and bodies are bounded.
func providerHTTPClient(timeout time.Duration) *http.Client {
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	return &http.Client{Timeout: timeout, Transport: limitedTransport{base: http.DefaultTransport}}
}

type limitedTransport struct{ base http.RoundTripper }

func (t limitedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{r: resp.Body, left: maxProviderResponse}
	return resp, nil
}

type limitedBody struct {
	r    io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte more tells a body of exactly the limit from a longer one.
		var one [1]byte
		if n, _ := b.r.Read(one[:]); n > 0 {
			return 0, errProviderResponseTooLarge
		}
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.r.Close() }
