package daemon

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
)

// TestTrustOutputPage: what members and backends wrote (a server's name
// and address in the quorum's view, the leader's pass: waiting lines,
// backend errors, reasons, recent outcomes) is escaped on the status page:
// markup as text, and control and bidi characters shown as escapes, not
// passed to the browser to act on.
func TestTrustOutputPage(t *testing.T) {
	const script = `<script>alert(1)</script>`
	h := "\x1b]0;pwned\x07" + script + "\x1b[2J\r\u202egpj.exe\x7f\u009b"
	e := &elector{last: &state.Status{
		Cluster: h, LastResult: h, LastError: h, Halted: h, Waiting: []string{h},
		Types:         map[string]state.TypeStatus{h: {Min: 1}},
		BackendErrors: map[string]string{h: h},
		InFlight:      []state.Action{{Kind: state.KindSpawn, MachineID: h, Type: h, Backend: h, Reason: h}},
		Recent:        []state.Outcome{{Action: state.Action{Kind: state.KindSpawn, MachineID: h, Reason: h}, Result: "error", Error: h}},
	}}
	q := &quorumWatch{status: &agentapi.QuorumStatus{
		LeaderlessSince: time.Now(), Recovery: h,
		Servers: []agentapi.ServerSeen{{Name: h, Address: h, Status: state.MemberStatus(h)}},
	}}
	s := &httpServer{cfg: nodeconfig.Config{MachineID: "server-1"}, mirror: &mirror{}, elector: e, quorum: q, clock: clock.Real{}}
	rec := httptest.NewRecorder()
	s.servePage(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	page := rec.Body.String()
	if rec.Code != http.StatusOK || !strings.Contains(page, `id="members"`) {
		t.Fatalf("got %d:\n%s", rec.Code, page)
	}
	if strings.Contains(page, "<script") {
		t.Errorf("a member's markup reached the page as markup:\n%s", page)
	}
	for i, r := range page {
		if r == utf8.RuneError || (r != '\n' && unicode.IsControl(r)) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) {
			t.Fatalf("the page holds %q at byte %d:\n%s", r, i, page)
		}
	}
	for _, want := range []string{`\x1b]0;pwned\a&lt;script&gt;`, `\u202egpj.exe\x7f\u009b`} {
		if got := strings.Count(page, want); got < 10 {
			t.Errorf("the page shows %s %d times, want every member-written string so:\n%s", want, got, page)
		}
	}
}
