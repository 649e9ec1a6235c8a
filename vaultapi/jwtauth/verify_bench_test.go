package jwtauth_test

import (
	"fmt"
	"testing"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// BenchmarkVerify verifies the same valid token again and again against a
// cached JWKS: a client that presents its token on every request.
func BenchmarkVerify(b *testing.B) {
	iss := newIssuer(b)
	v, _ := newVerifier(b, iss, nil)
	token := mint(b, iss, jwtissuer.Claims{Subject: "user-1"})
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, token); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyManyTokens cycles through 4 096 valid tokens of distinct
// users that have each been seen once: the token cache's steady state
// with many clients.
func BenchmarkVerifyManyTokens(b *testing.B) {
	iss := newIssuer(b)
	v, _ := newVerifier(b, iss, nil)
	tokens := make([]string, 4096)
	ctx := b.Context()
	for i := range tokens {
		tokens[i] = mint(b, iss, jwtissuer.Claims{Subject: fmt.Sprintf("user-%d", i)})
		if _, err := v.Verify(ctx, tokens[i]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := v.Verify(ctx, tokens[i%len(tokens)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkVerifyRejectsBadSignature is the cost of a forged token whose
// kid is known: a full signature check that fails.
func BenchmarkVerifyRejectsBadSignature(b *testing.B) {
	iss := newIssuer(b)
	v, _ := newVerifier(b, iss, nil)
	token := mint(b, iss, jwtissuer.Claims{Subject: "user-1"})
	forged := token[:len(token)-4] + "AAAA"
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, forged); err == nil {
			b.Fatal("forged token verified")
		}
	}
}

// BenchmarkVerifyUncached is the full check of every token, the cost of a
// token the verifier has not seen before (a login storm of new sessions).
func BenchmarkVerifyUncached(b *testing.B) {
	iss := newIssuer(b)
	v, _ := newVerifier(b, iss, func(c *jwtauth.Config) { c.TokenCacheSize = -1 })
	token := mint(b, iss, jwtissuer.Claims{Subject: "user-1"})
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, token); err != nil {
			b.Fatal(err)
		}
	}
}
