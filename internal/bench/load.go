package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Load configures one step of the load generator: GET URL with a bearer
// token picked at random per request, from Concurrency workers.
type Load struct {
	URL         string
	Tokens      []string
	Concurrency int
	// Warmup runs before the measured window and is not counted.
	Warmup time.Duration
	// Duration is the measured window.
	Duration time.Duration
	// Rate, when positive, paces the workers to this many requests per
	// second in total (open loop): each request falls due on a fixed
	// schedule and the next free worker sends it, instead of each worker
	// sending its next request as soon as the previous one answers
	// (closed loop). Paced latencies are measured from when a request was
	// due, not from when it was sent, so a server that falls behind is
	// not flattered by the generator waiting for it (coordinated
	// omission).
	Rate float64
	// Sequential hands out Tokens in order, each once (then from the
	// start again), instead of at random: with as many tokens as
	// requests, no token is presented twice, as in a storm of new logins.
	Sequential bool
	// OnMeasure, when set, runs as the measured window opens (reset the
	// server's peak RSS, snapshot counters).
	OnMeasure func()
	// Method, TokenHeader and Body, when set, make each request Method
	// with the token in the header TokenHeader and Body as its JSON body:
	// a peer's API, such as a Vault Transit decrypt (POST, X-Vault-Token,
	// {"ciphertext": …}). Unset: keybroker's fetch, GET with
	// "Authorization: Bearer <token>" and no body.
	Method      string
	TokenHeader string
	Body        []byte
}

// Result is what one step measured in its window.
type Result struct {
	OK      int           // 200 answers completed in the window
	Errors  int           // other answers and transport errors in the window
	Elapsed time.Duration // length of the window
	// Latencies of the OK requests, sorted.
	Latencies []time.Duration
	// FirstError describes one failure, for the report.
	FirstError string
	// GeneratorCPU is the load generator's own CPU time (user + system)
	// for the requests counted: what it took from the cores the server
	// shares. For the Go generator it is this whole process's (the log
	// reader, the JWKS server and local-kms included), an upper bound.
	GeneratorCPU time.Duration
}

// RPS is the throughput of successful requests.
func (r *Result) RPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.OK) / r.Elapsed.Seconds()
}

// Percentile returns the p-th percentile (0 < p ≤ 100) of the latencies,
// nearest-rank.
func (r *Result) Percentile(p float64) time.Duration {
	return percentile(r.Latencies, p)
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(float64(len(sorted))*p/100+0.999999) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

type workerResult struct {
	ok, errs   int
	latencies  []time.Duration
	firstError string
}

// Run drives one step and returns what it measured. It stops issuing
// requests at the end of the window and waits for those in flight; ctx
// ending stops it early.
func Run(ctx context.Context, l Load) (*Result, error) {
	if l.Concurrency < 1 || len(l.Tokens) == 0 || l.Duration <= 0 {
		return nil, errors.New("bench: Load needs Concurrency ≥ 1, Tokens and Duration")
	}
	target, err := url.Parse(l.URL)
	if err != nil || target.Scheme != "http" || target.Host == "" {
		return nil, fmt.Errorf("bench: Load.URL %q is not an http:// URL", l.URL)
	}
	start := time.Now()
	measureFrom := start.Add(l.Warmup)
	end := measureFrom.Add(l.Duration)
	var cpuFrom atomic.Int64
	cpuFrom.Store(int64(processCPU()))
	timer := time.AfterFunc(l.Warmup, func() {
		if l.OnMeasure != nil {
			l.OnMeasure()
		}
		cpuFrom.Store(int64(processCPU()))
	})
	defer timer.Stop()
	results := make([]workerResult, l.Concurrency)
	var next atomic.Int64
	var dues chan time.Time
	if l.Rate > 0 {
		dues = make(chan time.Time, 1024)
		go pace(ctx, dues, start, end, l.Rate)
	}
	var wg sync.WaitGroup
	for i := range l.Concurrency {
		wg.Go(func() {
			c := &conn{addr: target.Host, host: target.Host, path: target.RequestURI(), method: "GET", header: "Authorization: Bearer "}
			if l.Method != "" {
				c.method, c.header, c.body = l.Method, l.TokenHeader+": ", l.Body
			}
			defer c.close()
			results[i] = worker(ctx, l, c, i, &next, dues, measureFrom, end)
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	total := &Result{Elapsed: l.Duration, GeneratorCPU: processCPU() - time.Duration(cpuFrom.Load())}
	for _, w := range results {
		total.OK += w.ok
		total.Errors += w.errs
		total.Latencies = append(total.Latencies, w.latencies...)
		if total.FirstError == "" {
			total.FirstError = w.firstError
		}
	}
	slices.Sort(total.Latencies)
	return total, nil
}

// pace sends the due time of each request of a train with 1/rate between
// requests, from start until end, then closes dues. It waits with a
// preciseSleeper: the runtime's timers wake an idle process through
// epoll_wait, whose timeout is in whole milliseconds, and a request sent
// up to a millisecond late would count that lateness as the server's.
func pace(ctx context.Context, dues chan<- time.Time, start, end time.Time, rate float64) {
	defer close(dues)
	sleeper := newPreciseSleeper()
	defer sleeper.close()
	interval := float64(time.Second) / rate
	for i := 0; ctx.Err() == nil; i++ {
		due := start.Add(time.Duration(float64(i) * interval))
		if !due.Before(end) {
			return
		}
		if wait := time.Until(due); wait > 0 {
			sleeper.sleep(wait)
		}
		select {
		case dues <- due:
		case <-ctx.Done():
			return
		}
	}
}

// worker sends requests until end: back to back (closed loop), or, when
// dues is set, each as it falls due (open loop). A paced request's
// latency counts from when it was due, not from when a worker was free
// to send it, so a server that falls behind is not flattered by the
// generator waiting for it (coordinated omission).
func worker(ctx context.Context, l Load, c *conn, id int, next *atomic.Int64, dues <-chan time.Time, measureFrom, end time.Time) workerResult {
	var w workerResult
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(id)))
	for ctx.Err() == nil {
		sent := time.Now()
		if dues != nil {
			due, ok := <-dues
			if !ok {
				return w
			}
			sent = due
		}
		if !sent.Before(end) {
			return w
		}
		token := l.Tokens[rng.IntN(len(l.Tokens))]
		if l.Sequential {
			token = l.Tokens[int(next.Add(1)-1)%len(l.Tokens)]
		}
		status, err := c.get(ctx, token)
		done := time.Now()
		if done.Before(measureFrom) || done.After(end) {
			continue // warm-up, or past the window
		}
		switch {
		case err != nil:
			w.errs++
			if w.firstError == "" {
				w.firstError = err.Error()
			}
		case status != http.StatusOK:
			w.errs++
			if w.firstError == "" {
				w.firstError = fmt.Sprintf("HTTP %d", status)
			}
		default:
			w.ok++
			w.latencies = append(w.latencies, done.Sub(sent))
		}
	}
	return w
}

// conn is one worker's keep-alive HTTP/1.1 connection, as a C load
// generator (or pgbench) holds one: the request is written straight to
// the socket and the answer read by net/http's ReadResponse on the
// worker's own goroutine. http.Client hands every request to a write-loop
// and a read-loop goroutine of its connection, two wake-ups a request
// that cost the 2-core machine CPU the server and PostgreSQL need.
type conn struct {
	addr, host, path string
	method, header   string // "GET", "Authorization: Bearer "
	body             []byte
	nc               net.Conn
	br               *bufio.Reader
	req              []byte
}

// get sends the request — GET path with token as its bearer, or the
// peer's method, token header and body — and returns the status,
// having read the whole body; it dials when there is no connection, and
// drops one that failed or that the server closes.
func (c *conn) get(ctx context.Context, token string) (int, error) {
	if c.nc == nil {
		d := net.Dialer{Timeout: 10 * time.Second}
		nc, err := d.DialContext(ctx, "tcp", c.addr)
		if err != nil {
			return 0, err
		}
		c.nc, c.br = nc, bufio.NewReader(nc)
	}
	if err := c.nc.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		c.close()
		return 0, err
	}
	c.req = append(c.req[:0], c.method...)
	c.req = append(c.req, ' ')
	c.req = append(c.req, c.path...)
	c.req = append(c.req, " HTTP/1.1\r\nHost: "...)
	c.req = append(c.req, c.host...)
	c.req = append(c.req, "\r\n"...)
	c.req = append(c.req, c.header...)
	c.req = append(c.req, token...)
	if c.body != nil {
		c.req = append(c.req, "\r\nContent-Type: application/json\r\nContent-Length: "...)
		c.req = strconv.AppendInt(c.req, int64(len(c.body)), 10)
	}
	c.req = append(c.req, "\r\n\r\n"...)
	c.req = append(c.req, c.body...)
	if _, err := c.nc.Write(c.req); err != nil {
		c.close()
		return 0, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.close()
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.Close {
		c.close()
	}
	return resp.StatusCode, err
}

func (c *conn) close() {
	if c.nc != nil {
		_ = c.nc.Close()
		c.nc, c.br = nil, nil
	}
}

// NewClient returns a keep-alive client that holds enough idle
// connections for concurrency workers on one host.
func NewClient(concurrency int) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns:        concurrency + 16,
			MaxIdleConnsPerHost: concurrency + 16,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
		},
	}
}
