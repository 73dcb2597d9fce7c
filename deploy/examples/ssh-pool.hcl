# Machines you already own, adopted by the leader when the rules need them:
# the "ssh" backend is a pool of hosts reachable over SSH. The leader claims
# a free host in KV, provisions it (binaries over SFTP, config, service) and
# records it; when the machine dies it frees the host and
# adopts the next one. A host that fails to provision is backed off (30 s,
# doubling to 10 min) while the others are tried.
#
#   raptiformica platform apply deploy/examples/ssh-pool.hcl
cluster = "home"

backend "laptop" {
  type     = "local"
}

backend "boxes" {
  type = "ssh"
  settings = {
    # In order of preference; a user other than root needs passwordless sudo.
    hosts        = "root@192.0.2.20, root@192.0.2.21, admin@nas.home:2222"
    # On the leader. Host keys: known_hosts when given, else trusted on first
    # use and recorded in KV, so every later leader checks the same key.
    identity     = "/etc/raptiformica/id_ed25519"
    known_hosts  = "/etc/raptiformica/known_hosts"
    join_timeout = "2m"
  }
}

machine "server" {
  min           = 3
  consul_server = true
  backends      = ["laptop"]
}

machine "worker" {
  min      = 2
  max      = 3
  backends = ["boxes"]
  # The type's first provisioner: each machine runs it on itself once it
  # has joined, once per distinct list; output goes to
  # /var/lib/raptiformica/provisioners/bootstrap.log there.
  bootstrap = [
    ["apt-get", "update"],
    ["apt-get", "install", "-y", "--no-install-recommends", "nginx"],
  ]
}
