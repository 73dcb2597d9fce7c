package consulclient

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"
)

// TestMembersHasADeadline: an agent that accepts the connection and never
// answers costs its caller the caller's deadline, no more.
func TestMembersHasADeadline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	c, err := New(Target{Host: "127.0.0.1", HTTPPort: port})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	begin := time.Now()
	if _, err := Members(ctx, c); err == nil {
		t.Fatalf("members of a silent agent on port %s: no error", strconv.Itoa(port))
	}
	if took := time.Since(begin); took > 5*time.Second {
		t.Errorf("members of a silent agent returned after %s, past its 300ms deadline", took)
	}
}
