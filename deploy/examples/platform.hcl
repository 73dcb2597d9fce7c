# A platform description for raptiformica. Apply it with
#   raptiformica platform apply deploy/examples/platform.hcl
# Every agent validates it; a description with a problem is rejected with the
# file, line and field, and the cluster keeps running its last good one.

# The name of this virtual data center; it labels machines and metrics.
cluster = "example"

# How fast and how far the control loop may act. Every field is optional.
policy {
  max_concurrent_spawns = 2      # machines spawning or provisioning at once
  cooldown              = "2s"   # least time between two spawns of one type
  backoff_initial       = "5s"   # wait after a backend fails, doubled per failure...
  backoff_max           = "2m"   # ...up to this
  provision_timeout     = "2m"   # a spawned machine that has not joined by then is destroyed
  grace_period          = "20s"  # a failed member is replaced after this long
  max_unhealthy         = 2      # above this many failed members, stop replacing and alert
  resync_interval       = "10s"  # re-plan this often even when nothing changed
  quorum_lost_after     = "30s"  # no Consul leader this long: every node reports lost quorum
  recover_on_evidence   = true   # a survivor recovers alone once backends confirm the rest are gone
}

# Compute backends. "local" runs a machine as processes on its own loopback
# address 127.x.y.N on this host; it needs no root.
backend "local" {
  type = "local"
}

# Machine types. The Consul servers of all types together must be an odd
# number: three tolerate the loss of one, five of two.
machine "server" {
  min           = 3
  max           = 3
  consul_server = true
  backends      = ["local"]   # in order of preference
}

machine "worker" {
  min      = 2
  max      = 4
  backends = ["local"]
}

# Hooks run a command (an argv list, never a shell string) on an event; the
# event's data arrives as JSON on standard input.
hook "after_join" {
  command = ["/usr/bin/logger", "-t", "raptiformica"]
  timeout = "10s"
}
