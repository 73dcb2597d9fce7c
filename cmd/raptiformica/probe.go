package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/raptiformica/raptiformica/internal/probe"
)

func probeCmd() *cobra.Command {
	c := newCommand("probe HOST[:PORT] | --serve",
		"measure round-trip time and throughput to a machine running probe --serve (default port 9700), over the mesh or not", nArgs(0, 1),
		"raptiformica probe --serve", "raptiformica probe '[200:1234::1]'", "raptiformica probe 10.0.0.5:9700 --for 10s")
	serve := c.Flags().Bool("serve", false, "answer probes instead of sending them")
	listen := c.Flags().String("listen", net.JoinHostPort("::", strconv.Itoa(probe.Port)), "with --serve: the address to listen on")
	rounds := c.Flags().Int("rounds", 500, "round trips to time")
	seconds := c.Flags().Duration("for", 3*time.Second, "how long to stream for the throughput")
	c.RunE = func(c *cobra.Command, args []string) error {
		if *serve {
			return probeServe(c.Context(), *listen, c.OutOrStdout())
		}
		if len(args) != 1 {
			return fmt.Errorf("%w: probe HOST[:PORT] or probe --serve", errUsage)
		} else if err := probe.CheckCounts(*rounds, *seconds); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		return measure(c.Context(), args[0], *rounds, *seconds, c.OutOrStdout())
	}
	return c
}

func measure(ctx context.Context, addr string, rounds int, seconds time.Duration, out io.Writer) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, strconv.Itoa(probe.Port))
	}
	r, err := probe.Measure(ctx, addr, rounds, seconds)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s rtt_p50_us=%d rtt_p99_us=%d throughput_mbit=%.0f\n", addr, r.RTTP50.Microseconds(), r.RTTP99.Microseconds(), r.BitsPerSecond/1e6)
	return nil
}

func probeServe(ctx context.Context, addr string, out io.Writer) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "answering probes on %s\n", ln.Addr())
	return probe.Serve(ctx, ln)
}
