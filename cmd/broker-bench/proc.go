package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cpuTime is the CPU time, user and system, the process has used, from
// /proc/self/stat; 0 where there is none.
func cpuTime() time.Duration {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	d, _ := statCPU(data)
	return d
}

// benchMemory is the process's memory at one moment, after a collection.
type benchMemory struct {
	heap uint64 // live heap
	rss  uint64 // resident set; 0 where /proc is missing
	gors int
}

func readBenchMemory() benchMemory {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return benchMemory{heap: ms.HeapAlloc, rss: vmRSS(), gors: runtime.NumGoroutine()}
}

// vmRSS reads the resident set size from /proc/self/status.
func vmRSS() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb * 1024
		}
	}
	return 0
}

func fmtMB(n uint64) string { return fmt.Sprintf("%.1f MB", float64(n)/(1<<20)) }

func fmtMBDelta(a, b uint64) string {
	return fmt.Sprintf("%+.1f MB", (float64(b)-float64(a))/(1<<20))
}
