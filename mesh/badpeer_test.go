package mesh

import (
	"bytes"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// syncBuffer is a log output the library's goroutines may write to while
// the test reads it.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestHostileBadPeerIsSkipped: one peer that does not parse (a spelling an
// older version stored in the mirror, a hand-edited config) stopped the
// node at start, and so every node that had it, at its next restart. It
// is logged, by name, and skipped; the good peers are dialled and link.
func TestHostileBadPeerIsSkipped(t *testing.T) {
	secret := NewSecret()
	pa := startNode(t, t.TempDir(), listens, secret).ListenPort()
	var logs syncBuffer
	bad := []string{"[fe80::1%eth0]:9651", "tcp://[fe80::1%25eth0]:9651", "vps 1:9651", "vps1:+9651"}
	good := "127.0.0.1:" + strconv.Itoa(pa)
	b, err := Start(Config{
		KeyFile: filepath.Join(t.TempDir(), "mesh.key"), Secret: secret,
		Peers: append(slices.Clone(bad), good),
		Log:   hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Warn}),
	})
	if err != nil {
		t.Fatalf("start with one bad peer among good ones: %v", err)
	}
	t.Cleanup(b.Close)
	if got := b.Kept(); !slices.Equal(got, []string{good}) {
		t.Errorf("kept peers: got %q, want %q", got, good)
	}
	for _, ep := range bad {
		if !strings.Contains(logs.String(), strconv.Quote(ep)) {
			t.Errorf("the log does not name the bad peer %q:\n%s", ep, logs.String())
		}
	}
	waitFor(t, "the good peer's link", 10*time.Second, func() bool { return len(upPeers(b)) == 1 })
}
