package daemon

import (
	"net"
	"os"
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
