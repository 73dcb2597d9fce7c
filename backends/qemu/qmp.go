package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// qmpTimeout bounds each exchange with a QEMU monitor: a QEMU that is
// stopped (SIGSTOP, a host under swap) accepts the connection and never
// answers, and a client without a deadline hangs with it.
const qmpTimeout = 5 * time.Second

// qmpLineCap bounds one message from the monitor. QEMU's replies to the
// commands used here are a few hundred bytes; a larger line is not QEMU.
const qmpLineCap = 1 << 20

// qmp is a connection to a VM's QEMU Machine Protocol socket, past its
// greeting and capabilities negotiation.
type qmp struct {
	conn net.Conn
	r    *bufio.Reader
	// lineCap bounds one message; 0 is qmpLineCap.
	lineCap int
}

// dialQMP connects to the monitor socket in vmDir. Unix socket paths are
// limited to 107 bytes and a cluster folder can be deeper than that, so
// the socket is reached through a descriptor of its folder.
func dialQMP(ctx context.Context, vmDir string) (*qmp, error) {
	conn, err := dialUnix(ctx, vmDir, qmpSocket)
	if err != nil {
		return nil, err
	}
	q := &qmp{conn: conn, r: bufio.NewReaderSize(conn, 4096)}
	if err := q.deadline(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	var greeting struct {
		QMP json.RawMessage `json:"QMP"`
	}
	if err := q.read(&greeting); err != nil || greeting.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp greeting: %v", orBad(err))
	}
	if _, err := q.execute(ctx, "qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func orBad(err error) error {
	if err == nil {
		return errors.New("not a QMP greeting")
	}
	return err
}

// dialUnix connects to the unix socket name in dir, with ctx's deadline
// or qmpTimeout, whichever is sooner.
func dialUnix(ctx context.Context, dir, name string) (net.Conn, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	path := filepath.Join(fmt.Sprintf("/proc/self/fd/%d", d.Fd()), name)
	dctx, cancel := context.WithTimeout(ctx, qmpTimeout)
	defer cancel()
	var dialer net.Dialer
	return dialer.DialContext(dctx, "unix", path)
}

func (q *qmp) deadline(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dl := time.Now().Add(qmpTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	return q.conn.SetDeadline(dl)
}

// read decodes the next message, of at most qmpLineCap bytes.
func (q *qmp) read(v any) error {
	var line []byte
	for {
		part, isPrefix, err := q.r.ReadLine()
		if err != nil {
			return err
		}
		line = append(line, part...)
		limit := q.lineCap
		if limit == 0 {
			limit = qmpLineCap
		}
		if len(line) > limit {
			return fmt.Errorf("qmp: a message over %d bytes", limit)
		}
		if !isPrefix {
			break
		}
	}
	return json.Unmarshal(line, v)
}

// execute runs a command and returns its "return" value. Events that
// arrive before the reply are skipped.
func (q *qmp) execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	if err := q.deadline(ctx); err != nil {
		return nil, err
	}
	msg := map[string]any{"execute": command}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	for {
		var reply struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := q.read(&reply); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", command, err)
		}
		switch {
		case reply.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s: %s", command, reply.Error.Class, reply.Error.Desc)
		case reply.Return != nil:
			return reply.Return, nil
		}
	}
}

func (q *qmp) Close() error { return q.conn.Close() }

// qmpCommand connects to a VM's monitor, runs one command and hangs up.
func qmpCommand(ctx context.Context, vmDir, command string, args any) (json.RawMessage, error) {
	q, err := dialQMP(ctx, vmDir)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	return q.execute(ctx, command, args)
}
