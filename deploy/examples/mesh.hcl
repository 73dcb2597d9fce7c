# A virtual data center over the overlay mesh, on this host's Docker engine:
#   bin/raptiformica up --platform deploy/examples/mesh.hcl --dir /tmp/mesh-dc
# Two networks the engine keeps apart: the server is on "left", the workers
# on "right", and only the relay is on both. The workers never reach the
# server on their own network; over the mesh they do, through the relay.
# `raptiformica members` shows who links to whom.
cluster = "mesh-dc"
mesh    = "yggdrasil"

policy {
  grace_period          = "30s"
  cooldown              = "1s"
  # All at once: a worker spawned before the relay waits for it.
  max_concurrent_spawns = 4
}

# The server's containers get the engine's socket (it spawns the others);
# the relay's and the workers' never do.
backend "left" {
  type     = "docker"
  settings = { network = "mesh-dc-left", share_socket = "servers" }
}

backend "both" {
  type     = "docker"
  settings = { network = "mesh-dc-left,mesh-dc-right" }
}

backend "right" {
  type     = "docker"
  settings = { network = "mesh-dc-right" }
}

machine "server" {
  min           = 1
  consul_server = true
  backends      = ["left"]
}

machine "relay" {
  min      = 1
  backends = ["both"]
}

machine "worker" {
  min      = 2
  max      = 4
  backends = ["right"]
}
