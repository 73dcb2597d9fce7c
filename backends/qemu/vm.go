package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/procstat"
)

// vmProc is a VM's QEMU process, held by a pidfd: a signal sent through it
// reaches that process or none, never one that got its PID since.
type vmProc struct {
	pid int
	fd  int
}

func (p *vmProc) Close() { unix.Close(p.fd) }

// signal sends sig to the process; nil once it has exited.
func (p *vmProc) signal(sig unix.Signal) error {
	err := unix.PidfdSendSignal(p.fd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// exited reports whether the process has ended: its pidfd is readable.
func (p *vmProc) exited() bool {
	pfd := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	n, _ := unix.Poll(pfd, 0)
	return n > 0
}

// errNotRunning says a VM folder has no QEMU running for it.
var errNotRunning = errors.New("not running")

// findVM returns the QEMU process of the VM in vdir, if it runs. The PID
// file says which process and when it started; the process's start time
// and command line, read after its pidfd is open, say whether it is this
// VM's QEMU (PIDs are reused), and the pidfd whether it still runs. QMP
// is never asked: a stopped QEMU holds its socket open and answers
// nothing.
func findVM(vdir string) (*vmProc, error) {
	raw, err := os.ReadFile(filepath.Join(vdir, "pid"))
	if err != nil {
		return nil, errNotRunning
	}
	f := strings.Fields(string(raw))
	if len(f) != 2 {
		return nil, errNotRunning
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 1 {
		return nil, errNotRunning
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, errNotRunning
	}
	p := &vmProc{pid: pid, fd: fd}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	started, _ := startTime(pid)
	if err != nil || started != f[1] || !strings.Contains(string(cmdline), "file="+filepath.Join(vdir, "disk.qcow2")+",") || p.exited() || zombie(pid) {
		p.Close()
		return nil, errNotRunning
	}
	return p, nil
}

// writePID records a VM's QEMU: its PID and its start time, which a
// process that gets the PID later does not share.
func writePID(vdir string, pid int) error {
	started, err := startTime(pid)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(vdir, "pid"), []byte(strconv.Itoa(pid)+" "+started+"\n"), 0o600)
}

// startTime is when pid started, in clock ticks after boot.
func startTime(pid int) (string, error) {
	st, err := procstat.Of(pid)
	if err != nil {
		return "", fmt.Errorf("process %d: %w", pid, err)
	}
	return st.StartTime, nil
}

// zombie reports whether pid has exited and waits to be reaped (or is
// gone).
func zombie(pid int) bool {
	st, err := procstat.Of(pid)
	return err != nil || st.State == 'Z'
}

// stopVM ends the VM in vdir, if it runs: with grace, its power button
// first (ACPI: the guest's systemd shuts down, its agent leaving the
// cluster), then SIGKILL after grace or when ctx ends; without, SIGKILL
// at once. It returns once the process has exited.
func stopVM(ctx context.Context, vdir string, grace time.Duration) error {
	p, err := findVM(vdir)
	if err != nil {
		return nil
	}
	defer p.Close()
	if grace > 0 {
		if _, err := qmpCommand(ctx, vdir, "system_powerdown", nil); err != nil {
			grace = 0 // a QEMU that does not answer is killed
		}
	}
	if grace <= 0 {
		if err := p.signal(unix.SIGKILL); err != nil {
			return fmt.Errorf("kill QEMU (pid %d): %w", p.pid, err)
		}
	}
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !p.exited() && !zombie(p.pid) {
		select {
		case <-ctx.Done():
			p.signal(unix.SIGKILL)
			return ctx.Err()
		case <-deadline.C:
			if err := p.signal(unix.SIGKILL); err != nil {
				return fmt.Errorf("kill QEMU (pid %d): %w", p.pid, err)
			}
		case <-tick.C:
		}
	}
	return nil
}

// kvmProbeTimeout bounds the boot that tells whether KVM works here. Under
// KVM a kernel reaches userspace in about a second; some hosts' /dev/kvm
// (a paravirtual kind, nested) opens and then hangs a stock kernel.
const kvmProbeTimeout = 20 * time.Second

// accelerator says what this host's VMs run on: the accel setting, or for
// "auto", KVM if a kernel booted under it reaches userspace, else TCG.
// The probe runs once per host and kernel: its answer is kept in the VM
// folder (.accel), where every member of a local cluster on this host
// finds it, and made under the folder's lock, so that they do not all
// probe at once.
func (b *Backend) accelerator(ctx context.Context) (string, error) {
	if b.accel != "auto" {
		return b.accel, nil
	}
	b.accelMu.Lock()
	defer b.accelMu.Unlock()
	if b.accelFound != "" {
		return b.accelFound, nil
	}
	fi, err := os.Stat(b.kernel)
	if err != nil {
		return "", fmt.Errorf("qemu backend: %w", err)
	}
	key := fmt.Sprintf("%s %d %d", b.kernel, fi.Size(), fi.ModTime().UnixNano())
	file := filepath.Join(b.dir, ".accel")
	known := func() string {
		raw, err := os.ReadFile(file)
		if err != nil {
			return ""
		}
		k, a, ok := strings.Cut(strings.TrimSpace(string(raw)), "\n")
		if !ok || k != key || (a != "kvm" && a != "tcg") {
			return ""
		}
		return a
	}
	if a := known(); a != "" {
		b.accelFound = a
		return a, nil
	}
	if err := os.MkdirAll(b.dir, 0o700); err != nil {
		return "", err
	}
	unlock, err := fsutil.LockDir(ctx, b.dir, 0o600)
	if err != nil {
		return "", err
	}
	defer unlock()
	if a := known(); a != "" {
		b.accelFound = a
		return a, nil
	}
	a, err := b.probeKVM(ctx)
	if err != nil {
		return "", err
	}
	if err := fsutil.WriteFileAtomic(file, []byte(key+"\n"+a+"\n"), 0o600); err != nil {
		return "", err
	}
	b.accelFound = a
	return a, nil
}

func (b *Backend) probeKVM(ctx context.Context) (string, error) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg", nil
	}
	f.Close()
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	ok, _, err := BootsToUserspace(ctx, b.qemu, "kvm", b.kernel, b.initrd, kvmProbeTimeout)
	if err != nil && ctx.Err() != nil {
		return "", fmt.Errorf("qemu backend: probing whether KVM works here: %w", ctx.Err())
	}
	if ok {
		return "kvm", nil
	}
	return "tcg", nil
}

// BootsToUserspace boots kernel and initrd under accel with nothing else
// (no disk, no network) and reports whether the kernel started userspace
// within timeout, and how long it took: the floor a VM's boot cannot beat,
// and the test of whether an accelerator works here.
func BootsToUserspace(ctx context.Context, qemu, accel, kernel, initrd string, timeout time.Duration) (bool, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu,
		"-machine", "q35,accel="+accel, "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 rdinit=/bin/true",
		"-no-reboot")
	// Its own, unlike a VM's: it dies with the agent, which a probe that
	// hangs (the case it is for) must not outlive.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return false, 0, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return false, 0, err
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		// The kernel's line as it starts the first program of userspace.
		if strings.Contains(sc.Text(), "Run /") && strings.Contains(sc.Text(), "as init process") {
			return true, time.Since(start), nil
		}
	}
	if ctx.Err() != nil {
		return false, time.Since(start), ctx.Err()
	}
	return false, time.Since(start), sc.Err()
}

// Console returns the end of the console of the VM in vmDir, as QEMU
// keeps it (the last MiB), for an operator or a test to read.
func Console(ctx context.Context, vmDir string) (string, error) {
	raw, err := qmpCommand(ctx, vmDir, "ringbuf-read", map[string]any{"device": "console", "size": consoleSize, "format": "utf8"})
	if err != nil {
		return "", err
	}
	var out string
	err = json.Unmarshal(raw, &out)
	return out, err
}
