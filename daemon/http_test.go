package daemon

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// Only a caller holding the cluster's token makes a node act; a node that
// has no token (a config from before ACLs) acts for nobody. The token comes
// over TLS, or from the machine itself: sent in clear from another
// machine, it is refused (and whoever listened has it: rotate it).
func TestActingNeedsTheToken(t *testing.T) {
	const lo, remote = "127.0.0.1:40000", "192.0.2.7:40000"
	for _, tc := range []struct {
		name, token, auth, from string
		tls                     bool
		want                    int
	}{
		{"no header", "tok", "", lo, false, http.StatusUnauthorized},
		{"wrong token", "tok", "Bearer other", lo, false, http.StatusUnauthorized},
		{"a prefix of the token", "tok", "Bearer to", lo, false, http.StatusUnauthorized},
		{"not a bearer", "tok", "tok", lo, false, http.StatusUnauthorized},
		{"a node without a token", "", "Bearer ", lo, false, http.StatusUnauthorized},
		{"the token from the machine", "tok", "Bearer tok", lo, false, http.StatusNoContent},
		{"the token over TLS", "tok", "Bearer tok", remote, true, http.StatusNoContent},
		{"the token in clear from another machine", "tok", "Bearer tok", remote, false, http.StatusForbidden},
		{"a wrong token over TLS", "tok", "Bearer x", remote, true, http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &httpServer{cfg: nodeconfig.Config{ACLToken: tc.token}}
			acted := false
			handler := h.acting(func(w http.ResponseWriter, r *http.Request) {
				acted = true
				w.WriteHeader(http.StatusNoContent)
			})
			req := httptest.NewRequest(http.MethodPost, "/v1/mesh/peers", nil)
			req.RemoteAddr = tc.from
			if tc.tls {
				req.TLS = &tls.ConnectionState{}
			}
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			handler(rec, req)
			if rec.Code != tc.want || acted != (tc.want == http.StatusNoContent) {
				t.Errorf("got %d (acted %v), want %d", rec.Code, acted, tc.want)
			}
		})
	}
}
