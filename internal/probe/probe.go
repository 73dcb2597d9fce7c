// Package probe measures a path between two machines with TCP, so that the
// overlay and the machines' own network are measured the same way: a
// round-trip test (small messages echoed) and a throughput test (a stream
// written for a while, its size confirmed by the receiver). `raptiformica
// probe` and the mesh benchmark use it.
package probe

import (
	"context"
	endian "encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"
)

// Port is where probes are answered unless told otherwise.
const Port = 9700

const (
	echo    = 'e'
	sink    = 's'
	msgSize = 64
	chunk   = 128 << 10
)

// Result is what one measurement found.
type Result struct {
	RTTP50, RTTP99 time.Duration
	// BitsPerSecond is the throughput the receiver confirmed.
	BitsPerSecond float64
}

// CheckCounts refuses what Measure cannot measure: fewer than one round
// trip, or a stream of no time. Its errors name the CLI's flags.
func CheckCounts(rounds int, d time.Duration) error {
	if rounds < 1 {
		return fmt.Errorf("--rounds must be at least 1, got %d", rounds)
	}
	if d <= 0 {
		return fmt.Errorf("--for must be more than 0s, got %s", d)
	}
	return nil
}

// Measure times rounds round trips to the prober at addr, then streams to it
// for d. It returns when both are done, or with ctx's error; counts that
// CheckCounts refuses are an error before anything is sent.
func Measure(ctx context.Context, addr string, rounds int, d time.Duration) (Result, error) {
	if err := CheckCounts(rounds, d); err != nil {
		return Result{}, err
	}
	rtts, err := rtt(ctx, addr, rounds)
	if err != nil {
		return Result{}, err
	}
	bps, err := throughput(ctx, addr, d)
	if err != nil {
		return Result{}, err
	}
	return Result{RTTP50: rtts[len(rtts)/2], RTTP99: rtts[len(rtts)*99/100], BitsPerSecond: bps * 8}, nil
}

// Serve answers probes on ln until ctx ends, then closes ln and returns nil.
func Serve(ctx context.Context, ln net.Listener) error {
	defer ln.Close()
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go answer(c)
	}
}

func answer(c net.Conn) {
	defer c.Close()
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	switch mode[0] {
	case echo:
		_, _ = io.Copy(c, c)
	case sink:
		n, _ := io.Copy(io.Discard, c)
		var b [8]byte
		endian.BigEndian.PutUint64(b[:], uint64(n))
		_, _ = c.Write(b[:])
	}
}

func dial(ctx context.Context, addr string, mode byte) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{mode}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// rtt times rounds echoes of a small message, sorted.
func rtt(ctx context.Context, addr string, rounds int) ([]time.Duration, error) {
	c, err := dial(ctx, addr, echo)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	msg, back := make([]byte, msgSize), make([]byte, msgSize)
	rtts := make([]time.Duration, 0, rounds)
	for range rounds {
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return nil, err
		}
		rtts = append(rtts, time.Since(start))
	}
	slices.Sort(rtts)
	return rtts, nil
}

// throughput streams for d and returns the bytes per second the
// receiver confirms.
func throughput(ctx context.Context, addr string, d time.Duration) (float64, error) {
	c, err := dial(ctx, addr, sink)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	buf := make([]byte, chunk)
	start := time.Now()
	_ = c.SetDeadline(start.Add(d + time.Minute))
	for time.Since(start) < d {
		if _, err := c.Write(buf); err != nil {
			return 0, err
		}
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0, errors.New("probe: not a TCP connection")
	}
	if err := tc.CloseWrite(); err != nil {
		return 0, err
	}
	var b [8]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, err
	}
	return float64(endian.BigEndian.Uint64(b[:])) / time.Since(start).Seconds(), nil
}
