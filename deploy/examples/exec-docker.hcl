# An exec backend: workers are containers made by the docker command line,
# the way the original project's compute modules made them, beside a Consul
# server that runs as a process on this host.
#
#   bin/raptiformica up --platform deploy/examples/exec-docker.hcl --dir /tmp/exec-dc
#
# The server binds 172.17.0.1, the host's address on Docker's default bridge,
# so that the containers (which cannot reach the host's loopback) join it;
# change it if your docker0 has another address (`ip -4 addr show docker0`).
#
# Commands are argv lists. The machine's data reaches them in environment
# variables (RAPTIFORMICA_MACHINE_ID, RAPTIFORMICA_AGENT_CONFIG, ...; see the
# README), so a shell script quotes "$VARIABLES" and nothing is ever pasted
# into a command line. They run on the leader, which is why the containers,
# which have no shell and no docker command, never lead (lead = "false").
cluster = "exec-dc"

policy {
  grace_period = "5s"
  cooldown     = "1s"
}

backend "host" {
  type     = "local"
  settings = { addresses = "172.17.0.1" }
}

backend "containers" {
  type = "exec"
  settings = {
    lead          = "false"
    timeout       = "2m"
    query_timeout = "20s"
    image_name    = "raptiformica-exec-node" # read by the commands as RAPTIFORMICA_SETTING_IMAGE_NAME
  }
  commands = {
    available = ["docker", "info", "--format", "{{.ServerVersion}}"]

    # Import a node image FROM nothing (a tarball of the two static binaries:
    # nothing is pulled), tagged by content, then start the machine's agent
    # with the config the leader wrote for it.
    start_instance = ["/bin/sh", "-euc", <<-EOT
      tag="$RAPTIFORMICA_SETTING_IMAGE_NAME:$(cat "$RAPTIFORMICA_BINARY" "$RAPTIFORMICA_CONSUL_BINARY" | sha256sum | cut -c1-12)"
      exec 9>"$RAPTIFORMICA_WORKDIR/../image.lock" && flock 9 # one import at a time
      if ! docker image inspect "$tag" >/dev/null 2>&1; then
        root="$(mktemp -d)"
        mkdir -p "$root/usr/local/bin" "$root/tmp"
        cp "$RAPTIFORMICA_BINARY" "$root/usr/local/bin/raptiformica"
        cp "$RAPTIFORMICA_CONSUL_BINARY" "$root/usr/local/bin/consul"
        tar -C "$root" -c . | docker import --change 'ENTRYPOINT ["/usr/local/bin/raptiformica"]' \
          --change 'LABEL raptiformica.node-image=1' - "$tag" >/dev/null
        rm -rf "$root"
      fi
      flock -u 9
      docker run -d --name "rf-$RAPTIFORMICA_CLUSTER-$RAPTIFORMICA_MACHINE_ID" \
        --label "raptiformica.exec=$RAPTIFORMICA_CLUSTER" \
        --label "raptiformica.exec_machine_id=$RAPTIFORMICA_MACHINE_ID" \
        -v "$RAPTIFORMICA_AGENT_CONFIG:/etc/raptiformica/agent.json:ro" \
        "$tag" agent -config /etc/raptiformica/agent.json > container_id
    EOT
    ]

    get_hostname = ["/bin/sh", "-c", "docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' \"rf-$RAPTIFORMICA_CLUSTER-$RAPTIFORMICA_MACHINE_ID\""]

    detect_stale_instance = ["/bin/sh", "-c", "test \"$(docker inspect -f '{{.State.Running}}' \"rf-$RAPTIFORMICA_CLUSTER-$RAPTIFORMICA_MACHINE_ID\")\" = true"]

    # Gone already is fine; an engine that cannot be reached is not.
    clean_up_instance_command = ["/bin/sh", "-c", <<-EOT
      out="$(docker rm -f "rf-$RAPTIFORMICA_CLUSTER-$RAPTIFORMICA_MACHINE_ID" 2>&1)" || case "$out" in
        *"No such container"*) ;;
        *) echo "$out" >&2; exit 1 ;;
      esac
    EOT
    ]

    # Any node can list every machine, so a new leader knows them all.
    list_instances = ["/bin/sh", "-c", "docker ps -a --filter \"label=raptiformica.exec=$RAPTIFORMICA_CLUSTER\" --format '{{.Label \"raptiformica.exec_machine_id\"}} {{.State}}'"]
  }
}

machine "server" {
  min           = 1
  consul_server = true
  backends      = ["host"]
}

machine "worker" {
  min      = 2
  max      = 4
  backends = ["containers"]
}
