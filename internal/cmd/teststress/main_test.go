package main

import (
	"io"
	"strings"
	"testing"
)

func TestParseTellsFailedTestsFromFailedPackages(t *testing.T) {
	stream := strings.Join([]string{
		`{"Action":"run","Package":"p/a","Test":"TestOK"}`,
		`{"Action":"pass","Package":"p/a","Test":"TestOK"}`,
		`{"Action":"run","Package":"p/a","Test":"TestFlaky"}`,
		`{"Action":"output","Package":"p/a","Test":"TestFlaky","Output":"flaky_test.go:9: 5 > 4\n"}`,
		`{"Action":"fail","Package":"p/a","Test":"TestFlaky"}`,
		`{"Action":"fail","Package":"p/a"}`,
		`{"Action":"output","Package":"p/b","Output":"panic: test timed out after 20m0s\n"}`,
		`{"Action":"fail","Package":"p/b"}`,
		`{"Action":"run","Package":"p/c","Test":"TestSkipped"}`,
		`{"Action":"skip","Package":"p/c","Test":"TestSkipped"}`,
		`{"Action":"pass","Package":"p/c"}`,
		`not json: a build error line`,
	}, "\n")
	res, err := parse(strings.NewReader(stream), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.passed != 1 {
		t.Errorf("passed = %d, want 1", res.passed)
	}
	if len(res.failed) != 2 {
		t.Fatalf("failed = %v, want p/a TestFlaky and p/b", res.failed)
	}
	if out := strings.Join(res.failed["p/a TestFlaky"], ""); !strings.Contains(out, "5 > 4") {
		t.Errorf("TestFlaky's output = %q", out)
	}
	if out := strings.Join(res.failed["p/b"], ""); !strings.Contains(out, "timed out") {
		t.Errorf("p/b's output = %q", out)
	}
}

func TestReportFailsWhenAnyRunFailed(t *testing.T) {
	var out strings.Builder
	if code := report(&out, map[string]*failure{}, nil, 3); code != 0 {
		t.Fatalf("no failures: exit %d", code)
	}
	out.Reset()
	code := report(&out, map[string]*failure{"p/a TestFlaky": {runs: []int{2}}}, nil, 3)
	if code != 1 || !strings.Contains(out.String(), "failed in 1 of 3 runs [2]") {
		t.Fatalf("exit %d, report:\n%s", code, out.String())
	}
}
