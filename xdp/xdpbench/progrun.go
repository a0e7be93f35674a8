package xdpbench

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// progRun is BPF_PROG_TEST_RUN issued directly: cilium/ebpf's Program.Run
// drops the kernel's duration, and the duration is what a benchmark on a
// shared machine wants. The kernel times the repeat loop itself and stops
// its clock whenever the thread is rescheduled (bpf_test_timer), so time
// other processes take from this CPU is not charged to the program, as
// wall time would be.

// testRunAttr mirrors the test member of union bpf_attr.
type testRunAttr struct {
	progFD      uint32
	retval      uint32
	dataSizeIn  uint32
	dataSizeOut uint32
	dataIn      uint64
	dataOut     uint64
	repeat      uint32
	duration    uint32
	ctxSizeIn   uint32
	ctxSizeOut  uint32
	ctxIn       uint64
	ctxOut      uint64
	flags       uint32
	cpu         uint32
	batchSize   uint32
	_           uint32
}

// xdpMd mirrors struct xdp_md, the context of an XDP test run.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

const (
	// maxRestarts bounds the restarts after signals.
	maxRestarts    = 100
	bpfProgTestRun = 10 // BPF_PROG_TEST_RUN
	// flagLiveFrames is BPF_F_TEST_XDP_LIVE_FRAMES: the verdicts take
	// effect (XDP_TX and redirects transmit, XDP_PASS enters the stack).
	flagLiveFrames = 1 << 1
)

// runResult is one test run.
type runResult struct {
	verdict uint32
	// nsPerRun is the kernel's time per repetition: whole nanoseconds,
	// truncated.
	nsPerRun uint32
	out      []byte // the frame after the last run, when asked for
}

// runOpts are the inputs of progRun.
type runOpts struct {
	data      []byte
	ifindex   int
	repeat    uint32
	flags     uint32
	batchSize uint32
	wantOut   bool
}

// progRun runs prog with o. A run interrupted by a signal (EINTR) starts
// over, the kernel having discarded it, unless ctx is done.
func progRun(ctx context.Context, prog *ebpf.Program, o runOpts) (runResult, error) {
	if len(o.data) == 0 {
		return runResult{}, errors.New("test run: no packet data")
	}
	md := xdpMd{DataEnd: uint32(len(o.data)), IngressIfindex: uint32(o.ifindex)}
	var out []byte
	attr := testRunAttr{
		progFD:     uint32(prog.FD()),
		dataSizeIn: uint32(len(o.data)),
		dataIn:     uint64(uintptr(unsafe.Pointer(&o.data[0]))),
		repeat:     o.repeat,
		ctxSizeIn:  uint32(unsafe.Sizeof(md)),
		ctxIn:      uint64(uintptr(unsafe.Pointer(&md))),
		flags:      o.flags,
		batchSize:  o.batchSize,
	}
	if o.wantOut {
		// Room for encapsulation headers on top of the frame.
		out = make([]byte, len(o.data)+256)
		attr.dataSizeOut = uint32(len(out))
		attr.dataOut = uint64(uintptr(unsafe.Pointer(&out[0])))
	}
	var errno unix.Errno
	for range maxRestarts {
		_, _, errno = unix.Syscall(unix.SYS_BPF, bpfProgTestRun, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		if errno != unix.EINTR || ctx.Err() != nil {
			break
		}
	}
	runtime.KeepAlive(o.data)
	runtime.KeepAlive(out)
	runtime.KeepAlive(&md)
	runtime.KeepAlive(prog)
	if err := ctx.Err(); err != nil {
		return runResult{}, err
	}
	if errno != 0 {
		return runResult{}, fmt.Errorf("BPF_PROG_TEST_RUN (flags %#x, %d packets): %w", o.flags, o.repeat, errno)
	}
	r := runResult{verdict: attr.retval, nsPerRun: attr.duration}
	if o.wantOut {
		r.out = out[:min(int(attr.dataSizeOut), len(out))]
	}
	return r, nil
}
