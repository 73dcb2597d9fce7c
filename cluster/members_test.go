package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/rules"
)

// The CLI's member reads honour their caller's deadline (and Ctrl-C): a
// Consul that accepts and never answers once held `members`, `up` and
// `adopt` for as long as the client's own limit, whatever the command
// asked for.
func TestHostileMembersHonourTheDeadline(t *testing.T) {
	ln := testconsul.Silent(t)
	c, err := consulclient.New(consulclient.Target{Host: "127.0.0.1", HTTPPort: ln.Port})
	if err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(context.Context) error{
		"Members": func(ctx context.Context) error { _, _, err := Members(ctx, c, rules.Options{}); return err },
		"Alive":   func(ctx context.Context) error { _, err := Alive(ctx, c, "m"); return err },
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			errc := make(chan error, 1)
			go func() { errc <- f(ctx) }()
			select {
			case err := <-errc:
				if err == nil {
					t.Error("got no error from a Consul that never answers")
				}
			case <-time.After(3 * time.Second):
				t.Error("still waiting 3s after a deadline of 300ms")
			}
		})
	}
}
