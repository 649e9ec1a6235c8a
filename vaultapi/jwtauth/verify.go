package jwtauth

import (
	"context"
	"crypto/rsa"
	"errors"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

// MaxSubjectBytes bounds the sub claim, which becomes the user id stored in
// PostgreSQL text columns.
const MaxSubjectBytes = 255

// minRSABits refuses RSA keys too short to trust, should an operator allow
// RS*/PS* for some other issuer.
const minRSABits = 2048

// keyFamily is the kind of public key a JWS algorithm needs.
type keyFamily struct {
	kty jwa.KeyType
	crv string // empty: any curve (RSA has none)
}

// keyFamilies lists the algorithms that may appear in Config.Algorithms and
// the key each one needs. Everything here is asymmetric: a JWKS is public,
// so a symmetric algorithm would verify with a key every attacker has.
var keyFamilies = map[string]keyFamily{
	"EdDSA":   {jwa.OKP(), "Ed25519"},
	"Ed25519": {jwa.OKP(), "Ed25519"},
	"ES256":   {jwa.EC(), "P-256"},
	"ES384":   {jwa.EC(), "P-384"},
	"ES512":   {jwa.EC(), "P-521"},
	"RS256":   {jwa.RSA(), ""},
	"RS384":   {jwa.RSA(), ""},
	"RS512":   {jwa.RSA(), ""},
	"PS256":   {jwa.RSA(), ""},
	"PS384":   {jwa.RSA(), ""},
	"PS512":   {jwa.RSA(), ""},
}

// refusedAlgorithm reports whether alg is one we never accept, whatever the
// configuration says.
func refusedAlgorithm(alg string) bool {
	return strings.EqualFold(alg, "none") || strings.HasPrefix(strings.ToUpper(alg), "HS")
}

// Reasons attached to ErrUnauthorized. They are fixed strings on purpose:
// nothing read from the token is ever echoed back.
const (
	reasonMissing         = "missing token"
	reasonTooLarge        = "token too large"
	reasonMalformed       = "malformed token"
	reasonClosed          = "verifier closed"
	reasonNotLoaded       = "signing keys not loaded"
	reasonHeader          = "unsupported token header"
	reasonNoKid           = "token has no key id"
	reasonUnknownKid      = "unknown key id"
	reasonAlgNotAllowed   = "algorithm not allowed"
	reasonAlgMismatch     = "algorithm does not match key"
	reasonKeyUnusable     = "key not usable for signatures"
	reasonSignature       = "invalid signature"
	reasonExpired         = "token expired"
	reasonNotYetValid     = "token not yet valid"
	reasonIssuedInFuture  = "token issued in the future"
	reasonIssuer          = "issuer mismatch"
	reasonAudience        = "audience mismatch"
	reasonMissingExp      = "token has no expiry"
	reasonLifetime        = "token lifetime exceeds the maximum"
	reasonInvalidClaims   = "invalid claims"
	reasonMissingSubject  = "token has no subject"
	reasonInvalidSubject  = "invalid subject"
	reasonContextCanceled = "verification canceled"
)

func (cfg *Config) validateOptions() []jwt.ValidateOption {
	opts := []jwt.ValidateOption{
		jwt.WithAcceptableSkew(cfg.Leeway),
		jwt.WithRequiredClaim(jwt.ExpirationKey),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	return opts
}

// Verify checks token (the bare compact JWS: the caller strips "Bearer ")
// and returns its subject, the user id.
//
// The token must be signed by a key in the issuer's JWKS under an allowed
// algorithm that matches that key, carry an unexpired exp, satisfy nbf and
// iat within Leeway, live no longer than MaxLifetime (exp−iat and exp−now,
// each within Leeway), match Issuer and Audience when they are configured,
// and have a sub of 1–255 bytes of valid UTF-8 without control characters.
// A kid missing from the cached key set causes one rate-limited refetch.
// A token that verified is remembered (see Config.TokenCacheSize) until its
// exp or until the key set is refetched, whichever comes first.
//
// Every failure wraps ErrUnauthorized; the message carries a short reason
// and never the token.
func (v *Verifier) Verify(ctx context.Context, token string) (string, error) {
	if token == "" {
		return "", failure(reasonMissing)
	}
	if len(token) > MaxTokenBytes {
		return "", failure(reasonTooLarge)
	}
	if !wellFormedCompact(token) {
		return "", failure(reasonMalformed)
	}
	if v.lifetime.Err() != nil {
		return "", failure(reasonClosed)
	}
	digest := tokenDigest(token)
	now := time.Now()
	if sub, ok := v.tokens.lookup(digest, v.keySet(), now); ok {
		return sub, nil
	}

	// The key provider records why it refused the token, or that it handed
	// out a key: a jwx verification error after that means a bad signature,
	// and before it a header jwx could not parse.
	var reason string
	var keyProvided bool
	var verifiedBy jwk.Set // the key set the signing key came from
	provider := jws.KeyProviderFunc(func(ctx context.Context, sink jws.KeySink, sig *jws.Signature, _ *jws.Message) error {
		alg, key, set, why := v.selectKey(ctx, sig.ProtectedHeaders())
		if why != "" {
			reason = why
			return errors.New(why)
		}
		keyProvided, verifiedBy = true, set
		sink.Key(alg, key)
		return nil
	})

	opts := make([]jwt.ParseOption, 0, len(v.validate)+3)
	opts = append(opts, jwt.WithKeyProvider(provider), jwt.WithContext(ctx), jwt.WithValidate(true))
	for _, o := range v.validate {
		opts = append(opts, o)
	}
	tok, err := jwt.Parse([]byte(token), opts...)
	if err != nil {
		if reason != "" {
			return "", failure(reason)
		}
		return "", failure(classify(ctx, err, keyProvided))
	}

	if !v.lifetimeAllowed(tok, now) {
		return "", failure(reasonLifetime)
	}
	sub, ok := tok.Subject()
	if !ok || sub == "" {
		return "", failure(reasonMissingSubject)
	}
	if !validSubject(sub) {
		return "", failure(reasonInvalidSubject)
	}
	if exp, ok := tok.Expiration(); ok {
		v.tokens.store(digest, sub, exp, verifiedBy, now)
	}
	return sub, nil
}

// lifetimeAllowed reports whether tok lives no longer than MaxLifetime.
// exp−now catches a long-lived token with no iat (or an iat chosen to look
// recent); exp−iat catches one minted long ago for years. The leeway
// allows for the issuer's clock running ahead of ours.
func (v *Verifier) lifetimeAllowed(tok jwt.Token, now time.Time) bool {
	exp, ok := tok.Expiration()
	if !ok {
		return false // jwx already requires exp; never accept without one
	}
	limit := v.cfg.MaxLifetime + v.cfg.Leeway
	if exp.Sub(now) > limit {
		return false
	}
	if iat, ok := tok.IssuedAt(); ok && exp.Sub(iat) > limit {
		return false
	}
	return true
}

// wellFormedCompact accepts only the compact serialization: three
// base64url segments. The JSON serializations and JWE are refused before
// jwx sees them, which keeps the parser surface small.
func wellFormedCompact(token string) bool {
	dots := 0
	for i := 0; i < len(token); i++ {
		c := token[i]
		switch {
		case c == '.':
			dots++
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	if dots != 2 {
		return false
	}
	header, rest, _ := strings.Cut(token, ".")
	payload, signature, _ := strings.Cut(rest, ".")
	return header != "" && payload != "" && signature != ""
}

// classify turns a jwx error into one of our fixed reasons. Validation
// errors are recognised with errors.Is; anything else is a parse or
// signature problem, which the caller need not tell apart.
func classify(ctx context.Context, err error, keyProvided bool) string {
	switch {
	case ctx.Err() != nil:
		return reasonContextCanceled
	case errors.Is(err, jwt.TokenExpiredError()):
		return reasonExpired
	case errors.Is(err, jwt.TokenNotYetValidError()):
		return reasonNotYetValid
	case errors.Is(err, jwt.InvalidIssuedAtError()):
		return reasonIssuedInFuture
	case errors.Is(err, jwt.InvalidIssuerError()):
		return reasonIssuer
	case errors.Is(err, jwt.InvalidAudienceError()):
		return reasonAudience
	case errors.Is(err, jwt.MissingRequiredClaimError()):
		return reasonMissingExp // exp is the only claim we require from jwx
	case errors.Is(err, jwt.ValidateError()):
		return reasonInvalidClaims
	case keyProvided && errors.Is(err, jws.VerifyError()):
		return reasonSignature
	default:
		return reasonMalformed
	}
}

// selectKey decides which key and algorithm may verify a signature with the
// given protected header. The algorithm is the one the token names, but it
// is accepted only if it is allowed and consistent with the key the kid
// designates (the key's own alg when the JWK has one, else its type and
// curve): a token can therefore never talk us into HMAC with a public key,
// "none", or an RSA algorithm over an Ed25519 key.
func (v *Verifier) selectKey(ctx context.Context, hdr jws.Headers) (jwa.SignatureAlgorithm, jwk.Key, jwk.Set, string) {
	var none jwa.SignatureAlgorithm
	if hdr == nil {
		return none, nil, nil, reasonMalformed
	}
	// crit and b64 change how the signature is computed; Better Auth uses
	// neither, so refusing them removes a class of parser tricks.
	if hdr.Has(jws.CriticalKey) || hdr.Has(jws.B64Key) {
		return none, nil, nil, reasonHeader
	}
	alg, ok := hdr.Algorithm()
	if !ok {
		return none, nil, nil, reasonAlgNotAllowed
	}
	name := alg.String()
	family, known := keyFamilies[name]
	if refusedAlgorithm(name) || !known || !v.algorithms[name] {
		return none, nil, nil, reasonAlgNotAllowed
	}
	kid, ok := hdr.KeyID()
	if !ok || kid == "" {
		return none, nil, nil, reasonNoKid
	}

	key, set, why := v.lookupKey(ctx, kid)
	if why != "" {
		return none, nil, nil, why
	}

	if use, ok := key.KeyUsage(); ok && use != "" && use != jwk.ForSignature.String() {
		return none, nil, nil, reasonKeyUnusable
	}
	if ops, ok := key.KeyOps(); ok && len(ops) > 0 && !containsOp(ops, jwk.KeyOpVerify) {
		return none, nil, nil, reasonKeyUnusable
	}
	if keyAlg, ok := key.Algorithm(); ok && keyAlg.String() != name {
		return none, nil, nil, reasonAlgMismatch
	}
	if !keyMatchesFamily(key, family) {
		return none, nil, nil, reasonAlgMismatch
	}
	return alg, key, set, ""
}

// lookupKey finds kid in the cached key set, refetching the set once
// (rate-limited) when it is not there: the issuer may have rotated keys.
// It also returns the set the key came from.
func (v *Verifier) lookupKey(ctx context.Context, kid string) (jwk.Key, jwk.Set, string) {
	if set := v.keySet(); set != nil {
		if key, ok := set.LookupKeyID(kid); ok {
			return key, set, ""
		}
	}
	v.refresh(ctx)
	set := v.keySet()
	if set == nil {
		return nil, nil, reasonNotLoaded
	}
	key, ok := set.LookupKeyID(kid)
	if !ok {
		return nil, nil, reasonUnknownKid
	}
	return key, set, ""
}

func containsOp(ops jwk.KeyOperationList, want jwk.KeyOperation) bool {
	for _, op := range ops {
		if op == want {
			return true
		}
	}
	return false
}

// keyMatchesFamily checks the JWK's kty and curve against what the
// algorithm needs. Private keys published by mistake are treated like their
// public halves; symmetric (oct) keys never match any family.
func keyMatchesFamily(key jwk.Key, family keyFamily) bool {
	if key.KeyType() != family.kty {
		return false
	}
	switch k := key.(type) {
	case jwk.OKPPublicKey:
		crv, ok := k.Crv()
		return ok && crv.String() == family.crv
	case jwk.OKPPrivateKey:
		crv, ok := k.Crv()
		return ok && crv.String() == family.crv
	case jwk.ECDSAPublicKey:
		crv, ok := k.Crv()
		return ok && crv.String() == family.crv
	case jwk.ECDSAPrivateKey:
		crv, ok := k.Crv()
		return ok && crv.String() == family.crv
	case jwk.RSAPublicKey, jwk.RSAPrivateKey:
		var pub rsa.PublicKey
		if err := jwk.Export(key, &pub); err != nil {
			var priv rsa.PrivateKey
			if err := jwk.Export(key, &priv); err != nil {
				return false
			}
			pub = priv.PublicKey
		}
		return pub.N != nil && pub.N.BitLen() >= minRSABits
	default:
		return false
	}
}

// validSubject enforces what a user id stored as PostgreSQL text can hold
// safely: bounded length, valid UTF-8, and no control characters (a NUL
// would be rejected by PostgreSQL; others are log-injection material).
//
// U+FFFD is refused too: the JSON decoder turns invalid UTF-8 in the token
// into it, so "user\xff" and "user\xfe" would both arrive as "user\uFFFD"
// and name the same vault.
func validSubject(sub string) bool {
	if len(sub) == 0 || len(sub) > MaxSubjectBytes || !utf8.ValidString(sub) {
		return false
	}
	for _, r := range sub {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return false
		}
	}
	return true
}
