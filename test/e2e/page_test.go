package e2e

import (
	"bytes"
	"fmt"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// chromiumFlags start a headless Chromium that needs no display, no
// network and no state from an earlier run.
var chromiumFlags = []string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync"}

// browse loads url in headless Chromium and returns the page's rendered
// text (the DOM after loading, tags stripped, spaces collapsed).
func browse(t *testing.T, chromium, url string) string {
	t.Helper()
	args := append(append([]string(nil), chromiumFlags...), "--user-data-dir="+t.TempDir(), "--dump-dom", url)
	out, err := exec.Command(chromium, args...).Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom %s: %v", url, err)
	}
	return pageText(string(out))
}

var (
	headOrTag = regexp.MustCompile(`(?s)<head>.*?</head>|<[^>]*>`)
	spaces    = regexp.MustCompile(`\s+`)
)

func pageText(dom string) string {
	return strings.TrimSpace(spaces.ReplaceAllString(html.UnescapeString(headOrTag.ReplaceAllString(dom, " ")), " "))
}

// screenshot saves what Chromium draws of url as a PNG and returns it.
func screenshot(t *testing.T, chromium, url, file string) []byte {
	t.Helper()
	args := append(append([]string(nil), chromiumFlags...), "--user-data-dir="+t.TempDir(),
		"--window-size=1280,900", "--screenshot="+file, url)
	if out, err := exec.Command(chromium, args...).CombinedOutput(); err != nil {
		t.Fatalf("chromium --screenshot %s: %v\n%s", url, err, out)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStatusPage(t *testing.T) {
	t.Parallel()
	chromium := needTool(t, "chromium", "Debian's chromium package; scripts/testdeps.sh installs it")
	c := newCluster(t)
	c.up(c.writePlatform("platform.hcl", platformWith(3, 3, "2s", "", false)))
	v := c.waitAgree(3, time.Minute, "after up")

	// Any member serves the page; a follower's is read here.
	var url string
	for _, m := range c.machines() {
		if m.Config.MachineID == v.follower() {
			url = fmt.Sprintf("http://%s:%d/", m.Config.BindAddr, m.Config.HTTPPort)
		}
	}
	text := browse(t, chromium, url)
	for _, want := range []string{
		"cluster e2e", "Leader: " + v.leader, "Nothing: every rule is met or being met.",
		"server 3 3 3 0 0", v.leader + " (leader) server local",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the page lacks %q:\n%s", want, text)
		}
	}
	for _, id := range v.joined {
		// Machine, type, backend, the member that made it (none for
		// the seed), address, state, health, Consul role, its offers.
		if !regexp.MustCompile(regexp.QuoteMeta(id) + `( \(leader\))? server local (server-[0-9a-f]+ )?[0-9.]+ joined alive server local`).MatchString(text) {
			t.Errorf("the page does not show %s as a joined, alive server:\n%s", id, text)
		}
	}
	png := screenshot(t, chromium, url, filepath.Join(t.TempDir(), "page.png"))
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 10_000 {
		t.Errorf("screenshot is not a rendered page: %d bytes", len(png))
	}

	// A type that cannot be placed: the page says why, and shows the
	// failed spawns among the recent actions.
	stuck := c.writePlatform("stuck.hcl", platformWith(3, 3, "2s", placementBackends+workerOn(`"vm", "flaky"`), false))
	if out, errOut, code := c.rf("platform", "apply", stuck); code != 0 {
		t.Fatalf("apply: %s %s", out, errOut)
	}
	wants := []*regexp.Regexp{
		regexp.MustCompile(`Backend vm: unavailable: available: exit status 1: vagrant: not installed`),
		regexp.MustCompile(`machine "worker": 2 to spawn, but no backend is usable`),
		regexp.MustCompile(`worker 2 2 0 `),
		regexp.MustCompile(`spawn worker-\S+ worker error machine worker-\S+: start_instance: exit status 1: quota exceeded`),
	}
	deadline := time.Now().Add(time.Minute)
	for {
		text = browse(t, chromium, url)
		missing := ""
		for _, w := range wants {
			if !w.MatchString(text) {
				missing = w.String()
				break
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page never showed %q:\n%s", missing, text)
		}
		time.Sleep(time.Second)
	}
}
