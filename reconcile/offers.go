package reconcile

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"
)

// Offer is what one machine can run: each of the description's backends,
// asked on that machine (Available), as Nomad clients fingerprint their
// task drivers. Every agent publishes its own (kvschema.Offers), so that a
// machine can be placed on any member that offers its backend, not only on
// the leader.
type Offer struct {
	Machine string `json:"machine"`
	// Backends are the description's backends by name.
	Backends map[string]BackendOffer `json:"backends"`
	// Checked is when the machine last asked its backends.
	Checked time.Time `json:"checked"`
}

// BackendOffer is one backend as one machine found it.
type BackendOffer struct {
	Available bool `json:"available"`
	// Reason says why it is not available there.
	Reason string `json:"reason,omitempty"`
}

// Offered lists the backends the offer makes available, sorted.
func (o Offer) Offered() []string {
	var out []string
	for name, b := range o.Backends {
		if b.Available {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// maxOfferSize bounds one stored offer: a description has at most a few
// dozen backends, each a name and a line of reason.
const maxOfferSize = 64 << 10

// ParseOffer reads a stored offer of the machine id.
func ParseOffer(id string, b []byte) (Offer, error) {
	if len(b) > maxOfferSize {
		return Offer{}, fmt.Errorf("offer of %s: %d bytes, more than %d", id, len(b), maxOfferSize)
	}
	var o Offer
	if err := json.Unmarshal(b, &o); err != nil {
		return Offer{}, fmt.Errorf("offer of %s: %w", id, err)
	}
	if o.Machine != id {
		return Offer{}, fmt.Errorf("offer of %s names machine %q", id, o.Machine)
	}
	return o, nil
}
