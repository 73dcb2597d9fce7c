//go:build benchinsecure

package daemon

// insecureBench turns Consul's ACLs and TLS off, for `make bench` alone:
// it measures what they cost, on a binary built with -tags benchinsecure
// beside the real one. No release is built with the tag.
const insecureBench = true
