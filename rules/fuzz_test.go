package rules

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/raptiformica/raptiformica/internal/endpoint"
)

// seedDescriptions adds the descriptions we ship and test with; the
// hostile ones of issue 15 are files in testdata/fuzz/<target>.
func seedDescriptions(f *testing.F, ext string) {
	f.Helper()
	files, _ := filepath.Glob("../deploy/examples/*" + ext)
	more, _ := filepath.Glob("testdata/*" + ext)
	for _, name := range append(files, more...) {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	if ext == ".hcl" {
		f.Add([]byte(nestedTemplate(6)))
	}
}

// FuzzParseHCL: no description, however made, panics or takes long (a
// fuzz run stops a slow input), a refusal names the file, and what is
// accepted holds what the rest of the program counts on.
func FuzzParseHCL(f *testing.F) {
	seedDescriptions(f, ".hcl")
	f.Fuzz(func(t *testing.T, src []byte) { checkParse(t, "fuzz.hcl", src) })
}

// FuzzParseJSON is FuzzParseHCL for descriptions in JSON.
func FuzzParseJSON(f *testing.F) {
	seedDescriptions(f, ".json")
	f.Fuzz(func(t *testing.T, src []byte) { checkParse(t, "fuzz.json", src) })
}

// parseDeadline bounds one parse in a fuzz run: the fuzzer itself waits
// on a slow input without end and says nothing, and a description every
// node parses on each change must not be slow. The bound is loose, for a
// loaded machine; a real parse takes well under a millisecond.
const parseDeadline = 5 * time.Second

func checkParse(t *testing.T, name string, src []byte) {
	t.Helper()
	var p *Platform
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		p, err = Parse(name, src, allTypes)
	}()
	select {
	case <-done:
	case <-time.After(parseDeadline):
		t.Fatalf("parse took more than %s", parseDeadline)
	}
	if err != nil {
		var perr *Error
		if !errors.As(err, &perr) || len(perr.Problems) == 0 {
			t.Fatalf("got %T %v, want an *Error with problems", err, err)
		}
		if !strings.Contains(err.Error(), name) {
			t.Fatalf("the error does not name the file %s: %v", name, err)
		}
		return
	}
	if p == nil {
		t.Fatal("no platform and no error")
	}
	checkAccepted(t, p)
	// Every node parses the text it reads from KV: it must take it again,
	// and make the same of it.
	again, err := Parse(name, p.Source, allTypes)
	if err != nil {
		t.Fatalf("accepted once, refused again: %v", err)
	}
	if diff := cmp.Diff(p, again); diff != "" {
		t.Fatalf("parsed twice, two platforms (-first +second):\n%s", diff)
	}
}

// checkAccepted asserts what the planner, the backends and the mesh take
// for granted of a description that parsed.
func checkAccepted(t *testing.T, p *Platform) {
	t.Helper()
	if !nameRule.MatchString(p.Cluster) {
		t.Errorf("cluster %q breaks the name rule", p.Cluster)
	}
	if len(p.Machines) == 0 {
		t.Error("no machine type")
	}
	servers := p.ServerCount()
	if servers < 1 || servers%2 == 0 {
		t.Errorf("%d Consul servers, want an odd count", servers)
	}
	for name, m := range p.Machines {
		if !nameRule.MatchString(name) || m.Name != name {
			t.Errorf("machine type %q (named %q) breaks the name rule", name, m.Name)
		}
		if m.Min < 0 || m.Max < m.Min || m.Max > MaxMachines {
			t.Errorf("machine type %q: min %d, max %d", name, m.Min, m.Max)
		}
		if len(m.Backends) == 0 {
			t.Errorf("machine type %q has no backend", name)
		}
		for _, b := range m.Backends {
			if _, ok := p.Backends[b]; !ok {
				t.Errorf("machine type %q: backend %q is not declared", name, b)
			}
		}
		for _, pr := range m.Provisioners {
			for i, argv := range pr.Steps {
				if len(argv) == 0 || argv[0] == "" {
					t.Errorf("machine type %q: provisioner %q step %d has no program", name, pr.Name, i+1)
				}
			}
		}
	}
	for _, ep := range p.Mesh.Peers {
		u, err := endpoint.Parse(ep)
		if err != nil || u.Host != ep {
			t.Errorf("mesh peer %q is not in its one spelling: %v, %v", ep, u, err)
		}
	}
	if p.Mesh.Port < 1 || p.Mesh.Port > 65535 {
		t.Errorf("mesh port %d", p.Mesh.Port)
	}
	pol := p.Policy
	if pol.MaxConcurrentSpawns < 1 || pol.MaxConcurrentSpawns > MaxConcurrentSpawns || pol.MaxUnhealthy < 1 {
		t.Errorf("policy: max_concurrent_spawns %d, max_unhealthy %d", pol.MaxConcurrentSpawns, pol.MaxUnhealthy)
	}
	for _, d := range []struct {
		name string
		v    int64
	}{
		{"cooldown", int64(pol.Cooldown)}, {"backoff_initial", int64(pol.BackoffInitial)}, {"backoff_max", int64(pol.BackoffMax)},
		{"provision_timeout", int64(pol.ProvisionTimeout)}, {"grace_period", int64(pol.GracePeriod)},
		{"resync_interval", int64(pol.ResyncInterval)}, {"quorum_lost_after", int64(pol.QuorumLostAfter)},
	} {
		if d.v <= 0 {
			t.Errorf("policy %s is not positive: %d", d.name, d.v)
		}
	}
	if pol.BackoffMax < pol.BackoffInitial {
		t.Errorf("policy backoff_max %s < backoff_initial %s", pol.BackoffMax, pol.BackoffInitial)
	}
	for _, h := range p.Hooks {
		if !known(Events, h.Event) || len(h.Command) == 0 || h.Timeout <= 0 {
			t.Errorf("hook %+v", h)
		}
	}
}
