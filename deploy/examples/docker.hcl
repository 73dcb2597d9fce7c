# A virtual data center of containers on this host's Docker engine:
#   bin/raptiformica up --platform deploy/examples/docker.hcl --dir /tmp/docker-dc
# Every machine is a container with its own address on the bridge network
# "raptiformica-docker-dc", built from a node image made FROM scratch on first
# use (nothing is pulled).
cluster = "docker-dc"

policy {
  grace_period = "5s"    # containers die cleanly: replace them quickly
  cooldown     = "1s"
}

backend "docker" {
  type = "docker"
  # The servers' containers get the engine's socket, so that whichever leads
  # spawns and removes its siblings; the workers' never do (the socket is
  # root on this host). Without it no machine reaches the engine, and the
  # cluster never grows past the seed `up` starts.
  settings = { share_socket = "servers" }
  # settings = { share_socket = "servers", network = "my-net", image = "my-node-image:1" }
}

machine "server" {
  min           = 3
  consul_server = true
  backends      = ["docker"]
}

machine "worker" {
  min      = 2
  max      = 4
  backends = ["docker"]
}
