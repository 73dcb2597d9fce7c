package daemon

import (
	"context"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/telemetry"
)

// notify sends a state line to systemd when the agent runs under it as a
// Type=notify service; elsewhere it does nothing. The protocol is one
// datagram to $NOTIFY_SOCKET, so it is written here rather than taken from a
// library.
func notify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // abstract socket
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return
	}
	defer conn.Close()
	_, _ = conn.Write([]byte(state))
}

// watchdogInterval is how often systemd expects WATCHDOG=1 (WatchdogSec=),
// 0 when it expects none or expects it from another process.
func watchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond
}

// watchdog pings systemd at half its interval while this node's Consul
// answers from its own state: a hung Consul or agent does not, and systemd
// restarts the service. The look asks nothing of the servers. A Consul
// without a leader still answers (that is lost quorum, which a restart
// would not mend), and so does a client cut off from every server: it
// used to ask for the leader, an RPC to a server that fails in a
// partition, and systemd restarted every cut-off client, its Consul and
// its mesh, once a minute until the partition healed. It has no state.
type watchdog struct {
	consul *api.Client
	clock  clock.Clock
	log    hclog.Logger
}

// Run pings until ctx ends, then returns nil; without a systemd watchdog
// it just waits.
func (w *watchdog) Run(ctx context.Context) error {
	every := watchdogInterval() / 2
	if every <= 0 {
		<-ctx.Done()
		return nil
	}
	clock.Every(ctx, w.clock, every, func() {
		lctx, cancel := context.WithTimeout(ctx, every)
		_, err := w.consul.Agent().ChecksWithFilterOpts("", (&api.QueryOptions{}).WithContext(lctx))
		cancel()
		if err == nil {
			notify("WATCHDOG=1")
		} else {
			w.log.Warn("not pinging the systemd watchdog: consul does not answer", telemetry.KeyError, err)
		}
	})
	return nil
}
