package faults

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// VaultPath is the base path of the encryption-vault routes.
const VaultPath = "/api/v1/me/encryption-vault"

// Client calls a keybroker over HTTP from many goroutines at once. Unlike
// the require-based helpers of the package tests, it reports failures as
// errors, which goroutines other than the test's may return.
type Client struct {
	// Base is http://ADDR of the server.
	Base string
	// Timeout bounds each request; default 30s.
	Timeout time.Duration

	http *http.Client
}

// NewClient returns a client of the server at base whose connection pool
// fits concurrent load.
func NewClient(base string) *Client {
	return &Client{Base: base, http: &http.Client{Transport: &http.Transport{
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     30 * time.Second,
	}}}
}

// Close drops the client's idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Response is a decoded JSON answer.
type Response struct {
	Status  int
	Header  http.Header
	Body    map[string]any
	Raw     string
	Elapsed time.Duration
}

// Code is the error code of an error body, "" otherwise.
func (r *Response) Code() string {
	s, _ := r.Body["code"].(string)
	return s
}

// MasterKey is the decoded masterKey of a standard key body, or nil.
func (r *Response) MasterKey() []byte {
	s, _ := r.Body["masterKey"].(string)
	if s == "" {
		return nil
	}
	mk, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil
	}
	return mk
}

// Vault calls a vault route (path relative to VaultPath) as the holder of
// token, with body encoded as JSON when it is not nil.
func (c *Client) Vault(ctx context.Context, method, path, token string, body any) (*Response, error) {
	return c.Do(ctx, method, VaultPath+path, map[string]string{"Authorization": "Bearer " + token}, body)
}

// Do sends one request with the given headers.
func (c *Client) Do(ctx context.Context, method, path string, headers map[string]string, body any) (*Response, error) {
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, rd)
	if err != nil {
		return nil, err
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	start := time.Now()
	res, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, err
	}
	r := &Response{Status: res.StatusCode, Header: res.Header, Raw: string(raw), Elapsed: time.Since(start)}
	if len(raw) > 0 && json.Unmarshal(raw, &r.Body) != nil {
		return r, fmt.Errorf("%s %s: %d with a body that is not a JSON object: %q", method, path, res.StatusCode, raw)
	}
	return r, nil
}
