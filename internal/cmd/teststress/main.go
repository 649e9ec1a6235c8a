// Command teststress runs the whole test suite several times in a row
// with CPU contention beside it and reports every test that failed at
// least once. It is `make test-stress`: a test that passes only on a
// quiet machine fails here, where CI's random failures can be reproduced.
//
//	go run ./internal/cmd/teststress [-runs N] [-hogs N] [-- go test flags and packages]
//
// Each run is `go test -json -count=1 -race -timeout 20m ./...` (or the
// arguments after --). The hogs are copies of this program spinning on
// one core each; they exit with it. The exit status is 1 when any test or
// package failed in any run.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"time"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "-hog" {
		hog()
		return
	}
	runs := flag.Int("runs", 3, "how many times to run the suite")
	hogs := flag.Int("hogs", 2, "busy processes to run beside it")
	flag.Parse()
	args := flag.Args()
	if len(args) == 0 {
		args = []string{"-count=1", "-race", "-timeout", "20m", "./..."}
	}
	if *runs < 1 || *hogs < 0 {
		fmt.Fprintln(os.Stderr, "teststress: -runs must be at least 1 and -hogs at least 0")
		os.Exit(2)
	}
	stop, err := startHogs(*hogs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "teststress:", err)
		os.Exit(2)
	}
	failed := map[string]*failure{}
	var runErrs []string
	for i := 1; i <= *runs; i++ {
		start := time.Now()
		res, err := runSuite(args, os.Stdout)
		if err != nil {
			runErrs = append(runErrs, fmt.Sprintf("run %d: %v", i, err))
		}
		for name, out := range res.failed {
			f := failed[name]
			if f == nil {
				f = &failure{}
				failed[name] = f
			}
			f.runs = append(f.runs, i)
			f.output = out
		}
		fmt.Printf("== run %d/%d: %d tests passed, %d failed, %s (with %d busy processes)\n",
			i, *runs, res.passed, len(res.failed), time.Since(start).Round(time.Second), *hogs)
	}
	stop()
	os.Exit(report(os.Stdout, failed, runErrs, *runs))
}

type failure struct {
	runs   []int
	output []string
}

// report prints every test that failed in at least one run, with the
// output of its last failure, and returns the exit status.
func report(w io.Writer, failed map[string]*failure, runErrs []string, runs int) int {
	for _, e := range runErrs {
		fmt.Fprintln(w, "teststress:", e)
	}
	if len(failed) == 0 && len(runErrs) == 0 {
		fmt.Fprintf(w, "teststress: no test failed in %d runs\n", runs)
		return 0
	}
	names := make([]string, 0, len(failed))
	for name := range failed {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		f := failed[name]
		fmt.Fprintf(w, "\n--- %s: output of its last failure\n", name)
		out := f.output
		if len(out) > 60 {
			out = out[len(out)-60:]
		}
		fmt.Fprint(w, strings.Join(out, ""))
	}
	fmt.Fprintf(w, "\nteststress: %d tests failed at least once in %d runs:\n", len(failed), runs)
	for _, name := range names {
		fmt.Fprintf(w, "  %-90s failed in %d of %d runs %v\n", name, len(failed[name].runs), runs, failed[name].runs)
	}
	return 1
}

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

type result struct {
	passed int
	// failed maps "package Test" (or "package" for a package that failed
	// outside its tests: a build error, a panic, a timeout) to its output.
	failed map[string][]string
}

// runSuite runs go test once and gathers which tests passed and failed.
// Progress (package results) goes to progress.
func runSuite(args []string, progress io.Writer) (result, error) {
	var res result
	cmd := exec.Command("go", append([]string{"test", "-json"}, args...)...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	if err := cmd.Start(); err != nil {
		return res, err
	}
	res, err = parse(stdout, progress)
	waitErr := cmd.Wait()
	if err != nil {
		return res, err
	}
	if waitErr != nil && len(res.failed) == 0 {
		return res, fmt.Errorf("go test failed without a failing test: %w", waitErr)
	}
	return res, nil
}

// startHogs starts n copies of this program that each keep one core busy,
// and returns a function that stops them.
func startHogs(n int) (func(), error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var procs []*exec.Cmd
	stop := func() {
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}
	for range n {
		p := exec.Command(self, "-hog")
		if err := p.Start(); err != nil {
			stop()
			return nil, fmt.Errorf("start a busy process: %w", err)
		}
		procs = append(procs, p)
	}
	return stop, nil
}

// hog spins on one core until its parent is gone.
func hog() {
	runtime.GOMAXPROCS(1)
	parent := os.Getppid()
	x := uint64(1)
	for {
		for range 50_000_000 {
			x = x*6364136223846793005 + 1442695040888963407
		}
		if os.Getppid() != parent {
			os.Exit(int(x & 0))
		}
	}
}

// parse reads a `go test -json` stream.
func parse(r io.Reader, progress io.Writer) (result, error) {
	res := result{failed: map[string][]string{}}
	output := map[string][]string{}
	failedTests := map[string]bool{} // packages with a failed test
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var ev event
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			fmt.Fprintln(progress, sc.Text())
			continue
		}
		key := ev.Package
		if ev.Test != "" {
			key += " " + ev.Test
		}
		switch ev.Action {
		case "output":
			output[key] = append(output[key], ev.Output)
			if ev.Test == "" && ev.Package != "" {
				// A package-level line: keep the tail only.
				if n := len(output[key]); n > 200 {
					output[key] = output[key][n-200:]
				}
			}
		case "pass":
			if ev.Test != "" {
				res.passed++
			} else {
				fmt.Fprintf(progress, "ok   %s\n", ev.Package)
			}
			delete(output, key)
		case "skip":
			delete(output, key)
		case "fail":
			if ev.Test != "" {
				res.failed[key] = output[key]
				failedTests[ev.Package] = true
			} else {
				fmt.Fprintf(progress, "FAIL %s\n", ev.Package)
				if !failedTests[ev.Package] {
					// No test failed: the package itself did.
					res.failed[key] = output[key]
				}
			}
			delete(output, key)
		}
	}
	return res, sc.Err()
}
