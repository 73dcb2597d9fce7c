package e2e

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/backends/qemu"
)

// BenchmarkVM: the time from a description asking for one VM worker to its
// joining, beside the floor it cannot beat, measured in the same run: a
// bare boot of the same kernel and initramfs, on the same accelerator, to
// its first line of userspace. The rest is systemd's boot, the agent's and
// Consul's start and the join.
func BenchmarkVM(b *testing.B) {
	image := needVMImage(b)
	vmSlot.Lock()
	defer vmSlot.Unlock()
	l := newVMLab(b, image)
	// One worker, or none at all (a max of 0: between min and max the
	// planner keeps what runs).
	worker := func(n int) string { return l.platform("20s", workerType(n, n)) }
	l.up(l.writePlatform("platform.hcl", worker(0)))
	l.waitAgree(3, 2*time.Minute, "three servers")
	accel := ""
	for _, m := range l.members() {
		if a := m.OfferDetails["vm"]; a != "" {
			accel = a
		}
	}
	var joins, boots []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		l.apply(b, worker(1))
		if !poll(6*time.Minute, func() bool { time.Sleep(100 * time.Millisecond); return len(l.workers()) == 1 }) {
			b.Fatal("the VM worker did not join within 6m")
		}
		joined := time.Since(t0)
		ok, boot, err := qemu.BootsToUserspace(context.Background(), "qemu-system-x86_64", accel, filepath.Join(image, "vmlinuz"), filepath.Join(image, "initrd.img"), 2*time.Minute)
		if err != nil || !ok {
			b.Fatalf("bare boot under %s: %v", accel, err)
		}
		joins, boots = append(joins, joined), append(boots, boot)
		b.Logf("iteration %d (%s): asked to joined %s, bare boot to userspace %s", i, accel, joined.Round(time.Millisecond), boot.Round(time.Millisecond))
		l.apply(b, worker(0))
		l.waitAgree(3, 3*time.Minute, "the VM worker removed")
	}
	b.ReportMetric(quantile(joins, 0.5), "joined_p50_s")
	b.ReportMetric(quantile(joins, 0.9), "joined_p90_s")
	b.ReportMetric(quantile(boots, 0.5), "bare_boot_p50_s")
	b.ReportMetric(quantile(boots, 0.9), "bare_boot_p90_s")
}
