package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
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
	// second in total (open loop) instead of sending the next request as
	// soon as the previous one answers (closed loop). Paced latencies are
	// measured from when a request was due, not from when it was sent, so
	// a server that falls behind is not flattered by the generator
	// waiting for it (coordinated omission).
	Rate float64
	// Sequential hands out Tokens in order, each once (then from the
	// start again), instead of at random: with as many tokens as
	// requests, no token is presented twice, as in a storm of new logins.
	Sequential bool
	// Client sends the requests; its transport must keep at least
	// Concurrency idle connections per host.
	Client *http.Client
	// OnMeasure, when set, runs as the measured window opens (reset the
	// server's peak RSS, snapshot counters).
	OnMeasure func()
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
	if l.Concurrency < 1 || len(l.Tokens) == 0 || l.Duration <= 0 || l.Client == nil {
		return nil, errors.New("bench: Load needs Concurrency ≥ 1, Tokens, Duration and Client")
	}
	start := time.Now()
	measureFrom := start.Add(l.Warmup)
	end := measureFrom.Add(l.Duration)
	if l.OnMeasure != nil {
		timer := time.AfterFunc(l.Warmup, l.OnMeasure)
		defer timer.Stop()
	}
	results := make([]workerResult, l.Concurrency)
	var next atomic.Int64
	var wg sync.WaitGroup
	for i := range l.Concurrency {
		wg.Go(func() {
			results[i] = worker(ctx, l, i, &next, start, measureFrom, end)
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	total := &Result{Elapsed: l.Duration}
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

func worker(ctx context.Context, l Load, id int, next *atomic.Int64, start, measureFrom, end time.Time) workerResult {
	var w workerResult
	rng := rand.New(rand.NewPCG(uint64(start.UnixNano()), uint64(id)))
	// Paced workers share the schedule: worker id sends requests
	// id, id+C, id+2C, … of a train with 1/Rate between requests.
	var interval time.Duration
	if l.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(l.Concurrency) / l.Rate)
	}
	due := start
	if l.Rate > 0 {
		due = start.Add(time.Duration(float64(time.Second) * float64(id) / l.Rate))
	}
	var timer *time.Timer
	for ctx.Err() == nil {
		sent := time.Now()
		if l.Rate > 0 {
			if due.After(sent) {
				if timer == nil {
					timer = time.NewTimer(due.Sub(sent))
				} else {
					timer.Reset(due.Sub(sent))
				}
				select {
				case <-timer.C:
				case <-ctx.Done():
					return w
				}
			}
			sent = due // latency counts from when the request was due
			due = due.Add(interval)
		}
		if !sent.Before(end) {
			return w
		}
		token := l.Tokens[rng.IntN(len(l.Tokens))]
		if l.Sequential {
			token = l.Tokens[int(next.Add(1)-1)%len(l.Tokens)]
		}
		status, err := get(ctx, l.Client, l.URL, token)
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

func get(ctx context.Context, client *http.Client, url, token string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	// Drain the body so the connection goes back to the pool.
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, err
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
