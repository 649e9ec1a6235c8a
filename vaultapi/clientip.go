package vaultapi

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
)

// TrustedProxyClientIP returns a Config.ClientIP that believes
// X-Forwarded-For only as far as it was written by trusted proxies. When
// the TCP peer is not in trusted, the header is ignored (anyone can send
// it). Otherwise the header's addresses are walked from the right — the
// hop the peer added — skipping trusted proxies; the first address that
// is not a trusted proxy is the client. If every hop is trusted, the
// leftmost is. A hop that is not an address ends the walk at the last
// trusted one: what lies to its left was not written by anyone we trust.
func TrustedProxyClientIP(trusted []netip.Prefix) func(*http.Request) string {
	isTrusted := func(a netip.Addr) bool {
		for _, p := range trusted {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	return func(r *http.Request) string {
		peer, ok := parseHop(PeerIP(r))
		if !ok || !isTrusted(peer) {
			return PeerIP(r)
		}
		hops := forwardedHops(r.Header.Values("X-Forwarded-For"))
		client := peer
		for i := len(hops) - 1; i >= 0; i-- {
			addr, ok := parseHop(hops[i])
			if !ok {
				break
			}
			client = addr
			if !isTrusted(addr) {
				break
			}
		}
		return client.String()
	}
}

// forwardedHops splits X-Forwarded-For header lines into hops, in order;
// a proxy may append a line of its own or extend the last one.
func forwardedHops(lines []string) []string {
	var hops []string
	for _, line := range lines {
		for _, hop := range strings.Split(line, ",") {
			hops = append(hops, strings.TrimSpace(hop))
		}
	}
	return hops
}

// parseHop parses an address as proxies write it: bare ("192.0.2.1",
// "2001:db8::1") or with a port ("192.0.2.1:443", "[2001:db8::1]:443").
// IPv4-mapped IPv6 addresses become IPv4 so that IPv4 prefixes match.
func parseHop(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().WithZone(""), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().WithZone(""), true
	}
	return netip.Addr{}, false
}

// ParseTrustedProxies parses CIDRs ("10.0.0.0/8") and single addresses
// ("192.0.2.7", taken as /32 or /128) as TrustedProxyClientIP takes them.
func ParseTrustedProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("vaultapi: trusted proxy %q: want a CIDR (10.0.0.0/8, fd00::/8) or an address", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}
