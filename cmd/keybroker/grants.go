package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
	"github.com/keybroker/keybroker/grant"
)

// Mission grants: the workers grants are wrapped to (recipients), read
// and checked once at start — a key that does not parse, or cannot be
// wrapped to, refuses the start with a message naming its variable — and
// the grants' metrics. serve wires them into the broker; `keybroker grant
// check` reports the same checks, `keybroker grant keygen` makes a
// worker's key pair.

const (
	// envManaAIPublicKey is the upstream's variable: the default
	// recipient's RSA public key, the PEM text itself.
	envManaAIPublicKey = "MANA_AI_PUBLIC_KEY_PEM"
	envGrantRecipients = "KEYBROKER_GRANT_RECIPIENTS"
)

// maxRecipientKeyBytes bounds a recipient's PEM file: an X-Wing public
// key is some 1.7 KB of PEM, an RSA key of 16 384 bits 3 KB.
const maxRecipientKeyBytes = 64 << 10

// grantEntry is one configured recipient before it is parsed: where its
// key comes from (for messages) and the PEM, or why it could not be read.
type grantEntry struct {
	name   string
	source string // "$MANA_AI_PUBLIC_KEY_PEM" or "$KEYBROKER_GRANT_RECIPIENTS entry NAME (PATH)"
	pem    []byte
	err    error
}

// grantEntries reads the configured recipients' keys: the default one
// from $MANA_AI_PUBLIC_KEY_PEM (literal "\n" sequences, as one-line
// environment files write them, read as newlines), then each name=path of
// g.Recipients. A malformed list is an error; a key that cannot be read
// is recorded in its entry.
func grantEntries(g config.Grants) ([]grantEntry, error) {
	var out []grantEntry
	if text := g.DefaultPEM; text != "" {
		if !strings.Contains(text, "\n") {
			text = strings.ReplaceAll(text, `\n`, "\n")
		}
		out = append(out, grantEntry{name: grant.DefaultRecipient, source: "$" + envManaAIPublicKey, pem: []byte(text)})
	}
	for _, item := range config.SplitList(g.Recipients) {
		name, path, ok := strings.Cut(item, "=")
		if !ok || name == "" || path == "" {
			return nil, fmt.Errorf("$%s (--grant-recipients): entry %q: want name=/path/to/public-key.pem", envGrantRecipients, item)
		}
		e := grantEntry{name: name, source: fmt.Sprintf("$%s entry %s (%s)", envGrantRecipients, name, path)}
		e.pem, e.err = readRecipientKey(path)
		out = append(out, e)
	}
	return out, nil
}

func readRecipientKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxRecipientKeyBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxRecipientKeyBytes {
		return nil, fmt.Errorf("over %d bytes: not a public key", maxRecipientKeyBytes)
	}
	return data, nil
}

// recipient parses and checks one entry: its key parses, is usable
// (grant.Recipient.Check) and, for the default, is RSA.
func (e grantEntry) recipient() (*grant.Recipient, error) {
	if e.err != nil {
		return nil, fmt.Errorf("%s: %w", e.source, e.err)
	}
	r, err := grant.ParseRecipient(e.name, e.pem)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", e.source, err)
	}
	if err := r.Check(); err != nil {
		return nil, fmt.Errorf("%s: %w", e.source, err)
	}
	if e.name == grant.DefaultRecipient && r.Algorithm() != grant.RSAOAEP256 {
		return nil, fmt.Errorf("%s: the default recipient answers the upstream's requests, whose wrap is RSA-OAEP: give it an RSA key (%s)", e.source, r.Algorithm())
	}
	return r, nil
}

// loadGrantRecipients reads and checks every configured recipient and
// returns the set, nil when none is configured. The first key that is
// missing, malformed or unusable stops the start.
func loadGrantRecipients(g config.Grants) (*grant.Recipients, error) {
	entries, err := grantEntries(g)
	if err != nil || len(entries) == 0 {
		return nil, err
	}
	var list []*grant.Recipient
	for _, e := range entries {
		r, err := e.recipient()
		if err != nil {
			return nil, fmt.Errorf("mission grant recipient: %w", err)
		}
		list = append(list, r)
	}
	rs, err := grant.NewRecipients(list...)
	if err != nil {
		return nil, fmt.Errorf("mission grant recipients ($%s, $%s): %w", envManaAIPublicKey, envGrantRecipients, err)
	}
	return rs, nil
}

// grants is what serve wires into the broker: the recipients and the
// observer of every grant's outcome.
type grants struct {
	recipients *grant.Recipients
	metrics    *grantMetrics
}

// openGrants loads the recipients (refusing a bad key), logs them and
// registers the grant metrics with reg.
func openGrants(g config.Grants, reg prometheus.Registerer, log *slog.Logger) (*grants, error) {
	rs, err := loadGrantRecipients(g)
	if err != nil {
		return nil, err
	}
	if rs.Len() == 0 {
		log.Info("mission grants are not configured: POST /api/v1/me/ai-mission-grant answers 503 GRANT_NOT_CONFIGURED",
			slog.String("settings", envManaAIPublicKey+", "+envGrantRecipients))
	}
	for _, r := range rs.All() {
		log.Info("mission grant recipient", slog.String("recipient", r.Name()),
			slog.String("algorithm", string(r.Algorithm())), slog.String("fingerprint", r.Fingerprint()))
	}
	m, err := newGrantMetrics(reg, rs)
	if err != nil {
		return nil, err
	}
	return &grants{recipients: rs, metrics: m}, nil
}

// grantMetrics count the grants issued, by recipient, and refused, by
// reason.
type grantMetrics struct {
	issued  *prometheus.CounterVec
	refused *prometheus.CounterVec
}

// grantRefusalReasons are the reason label's values.
var grantRefusalReasons = []string{"bad_request", "not_configured", "unknown_recipient", "vault_not_initialised",
	"zero_knowledge", "user_unknown", "store_unavailable", "kek_unavailable", "internal"}

func newGrantMetrics(reg prometheus.Registerer, rs *grant.Recipients) (*grantMetrics, error) {
	m := &grantMetrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybroker_grants_issued_total",
			Help: "Mission grants issued, by recipient and wrap algorithm.",
		}, []string{"recipient", "algorithm"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybroker_grants_refused_total",
			Help: "Mission grant requests refused or failed, by reason (bad_request, not_configured, unknown_recipient, vault_not_initialised, zero_knowledge, user_unknown, store_unavailable, kek_unavailable, internal). Bodies that are not the request's JSON object are counted only in keybroker_http_requests_total.",
		}, []string{"reason"}),
	}
	if err := register(reg, m.issued, m.refused); err != nil {
		return nil, err
	}
	for _, r := range rs.All() { // shown at 0 before the first grant
		m.issued.WithLabelValues(r.Name(), string(r.Algorithm()))
	}
	for _, reason := range grantRefusalReasons {
		m.refused.WithLabelValues(reason)
	}
	return m, nil
}

// observe counts one grant's outcome; it is broker.Config.OnGrant.
func (g *grants) observe(e broker.GrantEvent) {
	if e.Outcome == broker.OutcomeOK {
		r, _ := g.recipients.Lookup(e.Recipient)
		algorithm := ""
		if r != nil {
			algorithm = string(r.Algorithm())
		}
		g.metrics.issued.WithLabelValues(e.Recipient, algorithm).Inc()
		return
	}
	g.metrics.refused.WithLabelValues(grantRefusalReason(e.Outcome)).Inc()
}

// grantRefusalReason is the reason label of a refused grant's outcome.
func grantRefusalReason(o broker.Outcome) string {
	switch o {
	case broker.OutcomeInvalidArgument:
		return "bad_request"
	case broker.OutcomeGrantNotConfigured:
		return "not_configured"
	case broker.OutcomeGrantRecipient:
		return "unknown_recipient"
	case broker.OutcomeNotFound:
		return "vault_not_initialised"
	case broker.OutcomeGrantZeroKnowledge:
		return "zero_knowledge"
	case broker.OutcomeUnknownUser:
		return "user_unknown"
	case broker.OutcomeStoreUnavailable:
		return "store_unavailable"
	case broker.OutcomeKEKUnavailable, broker.OutcomeUnknownKEK, broker.OutcomeKEKDenied:
		return "kek_unavailable"
	}
	return "internal"
}

const grantKeygenUsage = `Usage: keybroker grant keygen --private-key PATH [flags]

Makes a worker's key pair for mission grants: the private key in a new
0600 file (never overwritten), the public key, for
$KEYBROKER_GRANT_RECIPIENTS, on stdout or in --public-key.

Flags:
`

const grantCheckUsage = `Usage: keybroker grant check [flags]

Checks each configured mission grant recipient as serve does at start: its
key parses and can be wrapped to. Reads $MANA_AI_PUBLIC_KEY_PEM (the
default recipient) and $KEYBROKER_GRANT_RECIPIENTS (--grant-recipients).
Exit status 1 when one fails.

Flags:
`

// cmdGrantCheck is `keybroker grant check`: serve's start-up checks of
// the recipients, one line each.
func cmdGrantCheck(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.GrantCheck, args, getenv, stderr, grantCheckUsage)
	if err != nil {
		return err
	}
	entries, err := grantEntries(cfg.Grants)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		return fmt.Errorf("no mission grant recipient is configured: set $%s (the default recipient) or $%s", envManaAIPublicKey, envGrantRecipients)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "recipient\talgorithm\tresult\tfingerprint\tdetail")
	failed := 0
	var list []*grant.Recipient
	for _, e := range entries {
		r, err := e.recipient()
		if err != nil {
			failed++
			fmt.Fprintf(tw, "%s\t-\tFAILED\t-\t%v\n", e.name, err)
			continue
		}
		list = append(list, r)
		fmt.Fprintf(tw, "%s\t%s\tok\t%s\t%s\n", r.Name(), r.Algorithm(), r.Fingerprint(), e.source)
	}
	tw.Flush()
	if _, err := grant.NewRecipients(list...); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d mission grant recipients failed the check", failed, len(entries))
	}
	return nil
}

// cmdGrantKeygen is `keybroker grant keygen`.
func cmdGrantKeygen(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.GrantKeygen, args, getenv, stderr, grantKeygenUsage)
	if err != nil {
		return err
	}
	alg, privatePath, publicPath := &cfg.Tool.Algorithm, &cfg.Tool.PrivateKey, &cfg.Tool.PublicKey
	if *privatePath == "" {
		return errors.New("--private-key is required: the worker's private key goes to a file, never to the terminal")
	}
	key, err := grant.GenerateKey(grant.Algorithm(*alg))
	if err != nil {
		return err
	}
	defer key.Destroy()
	privatePEM, err := key.MarshalPEM()
	if err != nil {
		return err
	}
	defer clear(privatePEM)
	publicPEM, err := key.PublicPEM()
	if err != nil {
		return err
	}
	if err := writeNewFile(*privatePath, privatePEM, 0o600); err != nil {
		return fmt.Errorf("private key: %w", err)
	}
	if *publicPath == "" {
		_, err = stdout.Write(publicPEM)
		return err
	}
	if err := writeNewFile(*publicPath, publicPEM, 0o644); err != nil {
		return fmt.Errorf("public key: %w", err)
	}
	fmt.Fprintf(stderr, "%s key pair written; configure the server with %s=NAME=%s\n", *alg, envGrantRecipients, *publicPath)
	return nil
}

// writeNewFile writes data to a file that must not exist yet.
func writeNewFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
