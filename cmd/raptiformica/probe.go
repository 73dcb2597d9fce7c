package main

import (
	"context"
	endian "encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/spf13/cobra"
)

// The probe measures a path between two machines with TCP, so that the
// overlay and the machines' own network are measured the same way: a
// round-trip test (small messages echoed) and a throughput test (a stream
// written for a while, its size confirmed by the receiver).
const (
	probeEcho  = 'e'
	probeSink  = 's'
	probeMsg   = 64
	probePort  = 9700
	probeChunk = 128 << 10
)

func probeCmd() *cobra.Command {
	c := newCommand("probe HOST[:PORT] | --serve",
		"measure round-trip time and throughput to a machine running probe --serve (default port 9700), over the mesh or not", nArgs(0, 1),
		"raptiformica probe --serve", "raptiformica probe '[200:1234::1]'", "raptiformica probe 10.0.0.5:9700 --for 10s")
	serve := c.Flags().Bool("serve", false, "answer probes instead of sending them")
	listen := c.Flags().String("listen", net.JoinHostPort("::", strconv.Itoa(probePort)), "with --serve: the address to listen on")
	rounds := c.Flags().Int("rounds", 500, "round trips to time")
	seconds := c.Flags().Duration("for", 3*time.Second, "how long to stream for the throughput")
	c.RunE = func(c *cobra.Command, args []string) error {
		if *serve {
			return probeServe(c.Context(), *listen, c.OutOrStdout())
		}
		if len(args) != 1 {
			return fmt.Errorf("%w: probe HOST[:PORT] or probe --serve", errUsage)
		}
		return probe(c.Context(), args[0], *rounds, *seconds, c.OutOrStdout())
	}
	return c
}

func probe(ctx context.Context, addr string, rounds int, seconds time.Duration, out io.Writer) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, strconv.Itoa(probePort))
	}
	rtts, err := probeRTT(ctx, addr, rounds)
	if err != nil {
		return err
	}
	bps, err := probeThroughput(ctx, addr, seconds)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s rtt_p50_us=%d rtt_p99_us=%d throughput_mbit=%.0f\n", addr,
		rtts[len(rtts)/2].Microseconds(), rtts[len(rtts)*99/100].Microseconds(), bps*8/1e6)
	return nil
}

func probeServe(ctx context.Context, addr string, out io.Writer) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Fprintf(out, "answering probes on %s\n", ln.Addr())
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go probeAnswer(c)
	}
}

func probeAnswer(c net.Conn) {
	defer c.Close()
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	switch mode[0] {
	case probeEcho:
		_, _ = io.Copy(c, c)
	case probeSink:
		n, _ := io.Copy(io.Discard, c)
		var b [8]byte
		endian.BigEndian.PutUint64(b[:], uint64(n))
		_, _ = c.Write(b[:])
	}
}

func probeDial(ctx context.Context, addr string, mode byte) (net.Conn, error) {
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

// probeRTT times rounds echoes of a small message, sorted.
func probeRTT(ctx context.Context, addr string, rounds int) ([]time.Duration, error) {
	c, err := probeDial(ctx, addr, probeEcho)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	msg, back := make([]byte, probeMsg), make([]byte, probeMsg)
	rtts := make([]time.Duration, 0, rounds)
	for range max(rounds, 1) {
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

// probeThroughput streams for d and returns the bytes per second the
// receiver confirms.
func probeThroughput(ctx context.Context, addr string, d time.Duration) (float64, error) {
	c, err := probeDial(ctx, addr, probeSink)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	buf := make([]byte, probeChunk)
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
