package main

import (
	"bufio"
	"bytes"
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
// /proc/self/stat; 0 where there is none. The kernel counts it in ticks of
// USER_HZ, which is 100 on every Linux the broker builds for.
func cpuTime() time.Duration {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	// The command name in parentheses may hold spaces; the fields after
	// it start with the state (field 3), so utime (14) and stime (15)
	// are the 12th and 13th.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 13 {
		return 0
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(utime+stime) * (time.Second / 100)
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
