package wire

import (
	"crypto/tls"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// certReloader serves the client-leg certificate, loading the files again
// when they change (cert-manager and the like rotate them in place), so a
// rotation needs no restart and cuts no session. Checked at most every
// few seconds, from the handshake path.
type certReloader struct {
	certFile, keyFile string
	log               zerolog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string
	checked time.Time
}

const certCheckEvery = 5 * time.Second

func newCertReloader(certFile, keyFile string, log zerolog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	r.cert, r.stamp, r.checked = &cert, r.fileStamp(), time.Now()
	return r, nil
}

// fileStamp changes whenever either file is replaced or rewritten.
func (r *certReloader) fileStamp() string {
	var s string
	for _, f := range []string{r.certFile, r.keyFile} {
		if fi, err := os.Stat(f); err == nil {
			s += fi.ModTime().String() + "/" + strconv.FormatInt(fi.Size(), 10) + ";"
		}
	}
	return s
}

func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) < certCheckEvery {
		return r.cert, nil
	}
	r.checked = time.Now()
	stamp := r.fileStamp()
	if stamp == r.stamp {
		return r.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		// Mid-rotation (one file written, not yet the other) or broken:
		// keep serving the old pair and try again later.
		r.log.Warn().Err(err).Msg("client TLS certificate changed but does not load; keeping the previous one")
		return r.cert, nil
	}
	r.cert, r.stamp = &cert, stamp
	r.log.Info().Msg("client TLS certificate reloaded")
	return r.cert, nil
}
