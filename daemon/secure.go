//go:build !benchinsecure

package daemon

// insecureBench is false in every binary but the benchmark's (see
// insecure_bench.go): Consul always runs with ACLs and TLS.
const insecureBench = false
