package consulclient

import (
	"crypto/sha256"
	"fmt"
)

// NodeID is the Consul node ID raptiformica gives the machine named
// machineID, a UUID derived from the name. Consul's own is random and known
// only to the machine and the catalog; a derived one lets the leader take a
// dead server out of Raft by its ID straight from the Raft configuration,
// without the catalog read that can fail right after the Raft leader has
// changed, and without matching the configuration's node names, which
// Consul finds by address (a replacement may already listen on the dead
// server's address). The name is unique in a cluster, so the ID is too.
func NodeID(machineID string) string {
	h := sha256.Sum256([]byte("raptiformica consul node id\x00" + machineID))
	// A version 8 (custom) RFC 9562 UUID: Consul checks only the form.
	h[6] = h[6]&0x0f | 0x80
	h[8] = h[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}
