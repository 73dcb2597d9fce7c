package provision

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/raptiformica/raptiformica/backends"
)

// DialOptions are the ways to reach hosts that an operator or a backend's
// settings give: the adopt command's flags and the ssh pool's settings are
// the same few, read once here.
type DialOptions struct {
	// Identity is a private key file; empty: the SSH agent's keys and
	// ~/.ssh/id_*.
	Identity string
	// KnownHosts is a known_hosts file the host keys are checked against.
	KnownHosts string
	// Fingerprint is the host key's SHA256 fingerprint, for one host.
	Fingerprint string
	// Jump is a [user@]host[:port] to go through, as ssh -J does.
	Jump string
	// HostKeys, when set, trusts a host's first key and records it there
	// for every later connection, from any node.
	HostKeys backends.Store
}

// NewDialer builds the dialer the options describe. Problems name the
// option.
func NewDialer(o DialOptions) (Dialer, error) {
	d := Dialer{Trust: Trust{Fingerprint: o.Fingerprint}}
	if o.HostKeys != nil {
		d.Trust.Store = StoreHostKeys{Store: o.HostKeys}
	}
	d.Auth.KeyFiles = defaultKeyFiles()
	if o.Identity != "" {
		d.Auth.KeyFiles = []string{o.Identity}
	}
	if o.KnownHosts != "" {
		d.Trust.KnownHosts = []string{o.KnownHosts}
	}
	if o.Jump != "" {
		j, err := ParseHost(o.Jump)
		if err != nil {
			return d, fmt.Errorf("jump: %w", err)
		}
		d.Jump = &j
	}
	return d, nil
}

// HostEntry is one line of a host list: a machine to adopt, its type, and
// where it was asked for (FILE:LINE).
type HostEntry struct {
	Host  Host
	Type  string
	Where string
}

// maxHostListSize caps a host list file: a million bytes is tens of
// thousands of machines, and a bound on what a wrong file name (a disk
// image, a log) makes the command read.
const maxHostListSize = 1 << 20

// ReadHostList reads the host list in the file name (see ParseHostList).
func ReadHostList(name, defType string) ([]HostEntry, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxHostListSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return parseHostList(name, b, defType)
}

// parseHostList reads b, the text of the file name, as "[user@]host[:port]
// [TYPE]" lines (# starts a comment); TYPE defaults to defType. Every
// problem names the file and line; a host listed twice is one.
func parseHostList(name string, b []byte, defType string) ([]HostEntry, error) {
	if len(b) > maxHostListSize {
		return nil, fmt.Errorf("%s: larger than %d bytes, not a host list", name, maxHostListSize)
	}
	var out []HostEntry
	seen := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		where := fmt.Sprintf("%s:%d", name, i+1)
		if k := strings.Index(line, "#"); k >= 0 {
			line = line[:k]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) > 2 {
			return nil, fmt.Errorf("%s: want \"[user@]host[:port] [TYPE]\", got %q", where, strings.TrimSpace(line))
		}
		h, err := ParseHost(f[0])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		typ := defType
		if len(f) == 2 {
			typ = f[1]
		}
		if typ == "" {
			return nil, fmt.Errorf("%s: no machine type (give one on the line or --type)", where)
		}
		if prev, dup := seen[h.HostPort()]; dup {
			return nil, fmt.Errorf("%s: %s is listed already at %s", where, h.HostPort(), prev)
		}
		seen[h.HostPort()] = where
		out = append(out, HostEntry{Host: h, Type: typ, Where: where})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s lists no machine", name)
	}
	return out, nil
}

// AdoptAll runs adopt on every entry, at most parallel at once, and
// returns each entry's error, in order: one machine that fails stops none
// of the others.
func AdoptAll(entries []HostEntry, parallel int, adopt func(HostEntry) error) []error {
	errs := make([]error, len(entries))
	sem := make(chan struct{}, max(parallel, 1))
	var wg sync.WaitGroup
	for i, e := range entries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = adopt(e)
		}()
	}
	wg.Wait()
	return errs
}
