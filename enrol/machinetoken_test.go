package enrol

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/internal/testconsul"
)

// TestPolicyMadeByTwoSpawnsAtOnce: two spawns of one pass both find the
// shared client policy missing and both make it; the loser once failed its
// spawn ("A policy with name ... already exists"), which the soak caught.
// Every caller now gets the policy.
func TestPolicyMadeByTwoSpawnsAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs a real Consul (run without -short)")
	}
	t.Parallel()
	c, root := testconsul.StartACL(t), testconsul.ACLRoot
	admin := c.ClientWithToken(t, root)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for round := 0; round < 5; round++ {
		name := fmt.Sprintf("raptiformica-race-%d", round)
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = EnsurePolicy(ctx, admin, name, "test", `key_prefix "raptiformica/" { policy = "read" }`)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("round %d, caller %d: %v", round, i, err)
			}
		}
	}
}
