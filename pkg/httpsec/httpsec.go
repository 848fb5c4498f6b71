// Package httpsec adds what the HTTP endpoints (STOW-RS, viewer, metrics)
// share for security: an optional bearer token and optional TLS.
package httpsec

import (
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
)

// Options configure an endpoint. Zero values mean no token and plain HTTP.
type Options struct {
	// Token, when set, must come as "Authorization: Bearer <token>".
	Token string
	// CertFile and KeyFile, when set, serve HTTPS with this certificate.
	CertFile, KeyFile string
}

// Validate checks that a certificate comes with its key.
func (o Options) Validate() error {
	if (o.CertFile == "") != (o.KeyFile == "") {
		return errors.New("httpsec: TLS needs both a certificate and a key file")
	}
	return nil
}

// TLS reports whether the options serve HTTPS.
func (o Options) TLS() bool { return o.CertFile != "" }

// Listen listens on addr, with TLS when the options say so.
func (o Options) Listen(addr string) (net.Listener, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if !o.TLS() {
		return ln, nil
	}
	cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("httpsec: loading certificate: %w", err)
	}
	return tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}), nil
}

// Require wraps h so that every request but those to the exempt paths
// needs the token (when one is set); others get 401.
func (o Options) Require(h http.Handler, exempt ...string) http.Handler {
	if o.Token == "" {
		return h
	}
	want := []byte(o.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, p := range exempt {
			if r.URL.Path == p {
				h.ServeHTTP(w, r)
				return
			}
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="lungseg"`)
			http.Error(w, "a valid bearer token is required", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}
