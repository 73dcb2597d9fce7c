package daemon

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// Only a caller holding the cluster's token makes a node act; a node that
// has no token (a config from before ACLs) acts for nobody.
func TestActingNeedsTheToken(t *testing.T) {
	for _, tc := range []struct {
		name, token, auth string
		want              int
	}{
		{"no header", "tok", "", http.StatusUnauthorized},
		{"wrong token", "tok", "Bearer other", http.StatusUnauthorized},
		{"a prefix of the token", "tok", "Bearer to", http.StatusUnauthorized},
		{"not a bearer", "tok", "tok", http.StatusUnauthorized},
		{"a node without a token", "", "Bearer ", http.StatusUnauthorized},
		{"the token", "tok", "Bearer tok", http.StatusNoContent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &httpServer{cfg: nodeconfig.Config{ACLToken: tc.token}}
			acted := false
			handler := h.acting(func(w http.ResponseWriter, r *http.Request) {
				acted = true
				w.WriteHeader(http.StatusNoContent)
			})
			req := httptest.NewRequest(http.MethodPost, "/v1/mesh/peers", nil)
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
