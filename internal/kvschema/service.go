package kvschema

// ServiceName is the Consul service every agent registers with its HTTP
// port: Prometheus finds the agents' /metrics through it, and the CLI the
// leader's agent. It is kept with the KV map because the ACL rules name it
// (ClientRules: a client may register it on its own node).
const ServiceName = "raptiformica"
