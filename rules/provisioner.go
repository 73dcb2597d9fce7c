package rules

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// MaxProvisionerSteps caps a provisioner's steps: far more than software
// takes to install, and a bound on what a machine records and reruns.
const MaxProvisionerSteps = 100

// MaxProvisioners caps a machine type's provisioners, for the same reason.
const MaxProvisioners = 32

// scpLike is git's "user@host:path" form of an SSH URL.
var scpLike = regexp.MustCompile(`^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^:]+$`)

// CheckGitSource reports why s is not a provisioner source: a git
// repository at a file://, https:// or ssh:// URL or in git's
// "user@host:path" form, or empty (no repository). Sources are what every
// machine of a type clones as root, so plain http:// and git:// (which
// nothing authenticates) and git's remote helpers ("ext::") are refused,
// and so is anything git could read as an option.
func CheckGitSource(s string) error {
	if s == "" {
		return nil
	}
	if strings.HasPrefix(s, "-") {
		return fmt.Errorf("%q starts with \"-\"; a git URL never does", s)
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f {
			return fmt.Errorf("%q has a space or a control character; a git URL has none", s)
		}
	}
	if scpLike.MatchString(s) {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		return fmt.Errorf("%q is not a git URL such as file:///srv/git/web.git, https://host/repo.git, ssh://host/repo.git or git@host:repo.git", s)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") {
			return fmt.Errorf("%q: a file URL names an absolute path, as file:///srv/git/web.git", s)
		}
	case "https", "ssh":
		if u.Host == "" || u.Path == "" || u.Path == "/" {
			return fmt.Errorf("%q: a %s URL names a host and a repository, as %s://host/repo.git", s, u.Scheme, u.Scheme)
		}
	case "http", "git":
		return fmt.Errorf("%q: %s:// is not authenticated and the steps run as root; use https:// or ssh://", s, u.Scheme)
	default:
		return fmt.Errorf("%q: scheme %q is not taken (file, https, ssh or git@host:path)", s, u.Scheme)
	}
	return nil
}

// ProvisionChecksum identifies what the description asks machines of this
// type to provision: every provisioner's name, source and steps, in order.
// A machine publishes the checksum it provisioned for, and the leader
// compares it with this one, so that a machine counts as provisioned only
// for the description in force. It is the same on every node for the same
// description, and the empty string for a type without provisioners.
func (m MachineType) ProvisionChecksum() string {
	if len(m.Provisioners) == 0 {
		return ""
	}
	type spec struct {
		Name   string     `json:"name"`
		Source string     `json:"source"`
		Steps  [][]string `json:"steps"`
	}
	specs := make([]spec, len(m.Provisioners))
	for i, p := range m.Provisioners {
		specs[i] = spec{p.Name, p.Source, p.Steps}
	}
	b, _ := json.Marshal(specs) // strings and lists of them always encode
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
