package token

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// An identity endpoint that streams without end is cut off at the size
// bound, and one that never answers at the token timeout: neither holds a
// request, or memory, past the mint.
func TestProviderHTTPClientBounds(t *testing.T) {
	chunk := []byte(`{"access_token":"` + strings.Repeat("A", 64<<10))
	stream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 1000 && r.Context().Err() == nil; i++ { // at most 64 MiB
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	defer stream.Close()
	resp, err := providerHTTPClient(5 * time.Second).Get(stream.URL)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if !errors.Is(err, errProviderResponseTooLarge) || n > maxProviderResponse {
		t.Errorf("read %d bytes, %v; want at most %d and the size error", n, err, maxProviderResponse)
	}

	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer hang.Close()
	start := time.Now()
	if _, err := providerHTTPClient(200 * time.Millisecond).Get(hang.URL); err == nil {
		t.Errorf("a request to an endpoint that never answers returned no error")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the request was not cut off at its timeout (took %s)", d)
	}
}
