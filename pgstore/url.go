package pgstore

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// URLError is a database URL that does not parse: which part is wrong,
// and the URL with its password redacted.
type URLError struct {
	// URL is the URL as given with its password replaced by xxxxx.
	URL string
	// Reason says which part is wrong and how to write it.
	Reason string
}

func (e *URLError) Error() string {
	return fmt.Sprintf("pgstore: the database URL %s does not parse: %s", e.URL, e.Reason)
}

// redactedPassword stands for a password in a URL shown to an operator.
const redactedPassword = "xxxxx"

// CheckURL reports whether s — a postgres:// URL or a keyword/value
// string — parses as OpenPool will parse it. Its error is a *URLError,
// which never holds the password.
func CheckURL(s string) error {
	if _, err := pgxpool.ParseConfig(s); err != nil {
		return &URLError{URL: RedactURL(s), Reason: urlProblem(s)}
	}
	return nil
}

// URLPoolSize is the pool_max_conns the URL sets, if it sets a valid one.
func URLPoolSize(s string) (int, bool) {
	if !strings.Contains(s, "pool_max_conns") {
		return 0, false
	}
	cfg, err := pgxpool.ParseConfig(s)
	if err != nil {
		return 0, false
	}
	return int(cfg.MaxConns), true
}

var (
	urlScheme = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*)://`)
	// kvPassword is a password in a keyword/value string: password=x,
	// password = 'x y', sslpassword=….
	kvPassword = regexp.MustCompile(`(?i)\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)`)
)

// RedactURL returns s with every password in it replaced by xxxxx: the
// password of the user information (everything between the first ':'
// after the scheme and the last '@', so a password with an unescaped '/'
// or '@' is hidden whole) and the values of password= and sslpassword=,
// in a URL's query or a keyword/value string. The rest — host, database,
// query — stays, so an operator sees what is wrong.
func RedactURL(s string) string {
	m := urlScheme.FindStringSubmatch(s)
	if m == nil {
		return kvPassword.ReplaceAllString(s, "${1}"+redactedPassword)
	}
	prefix, rest := m[0], s[len(m[0]):]
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		userinfo := rest[:at]
		if colon := strings.Index(userinfo, ":"); colon >= 0 {
			userinfo = userinfo[:colon+1] + redactedPassword
		}
		rest = userinfo + rest[at:]
	}
	base, query, hasQuery := strings.Cut(rest, "?")
	if !hasQuery {
		return prefix + base
	}
	params := strings.Split(query, "&")
	for i, p := range params {
		key, _, hasValue := strings.Cut(p, "=")
		if k, err := url.QueryUnescape(key); err == nil {
			key = k
		}
		if hasValue && (strings.EqualFold(key, "password") || strings.EqualFold(key, "sslpassword")) {
			params[i] = p[:strings.Index(p, "=")+1] + redactedPassword
		}
	}
	return prefix + base + "?" + strings.Join(params, "&")
}

// urlProblem says which part of s keeps it from parsing, without quoting
// its password: the checks run on the redacted URL, and when that one
// parses the password (or the user name) is what is wrong.
func urlProblem(s string) string {
	redacted := RedactURL(s)
	m := urlScheme.FindStringSubmatch(s)
	if m == nil {
		if strings.Contains(s, "://") || !strings.Contains(s, "=") {
			return "it is neither a postgres:// URL nor keyword=value pairs; write postgres://USER@HOST:5432/DATABASE?sslmode=verify-full"
		}
		if _, err := pgxpool.ParseConfig(redacted); err != nil {
			return "keyword=value string: " + err.Error()
		}
		return "keyword=value string: the password value does not parse; quote it in single quotes, or use a passfile"
	}
	if scheme := strings.ToLower(m[1]); scheme != "postgres" && scheme != "postgresql" {
		return fmt.Sprintf("the scheme is %q; write postgres:// (or postgresql://)", m[1])
	}
	_, err := pgxpool.ParseConfig(redacted)
	if err == nil {
		return "the user name or the password holds a character a URL reserves (: / ? # @ [ ] or a % not followed by two hex digits); " +
			"percent-encode it (/ is %2F, @ is %40, # is %23, ? is %3F, : is %3A, % is %25), or leave the password out of the URL and keep it in a passfile"
	}
	u, perr := url.Parse(redacted)
	if perr != nil {
		var urlErr *url.Error
		if errors.As(perr, &urlErr) {
			perr = urlErr.Err // without the URL, which the message shows already
		}
		return fmt.Sprintf("%v (the host:port or the path)", perr)
	}
	q := u.Query()
	switch mode := q.Get("sslmode"); mode {
	case "", "disable", "allow", "prefer", "require", "verify-ca", "verify-full":
	default:
		return fmt.Sprintf("sslmode=%q: use disable, allow, prefer, require, verify-ca or verify-full", mode)
	}
	if v := q.Get("connect_timeout"); v != "" {
		if n, err := strconv.Atoi(v); err != nil || n < 0 {
			return fmt.Sprintf("connect_timeout=%q: want whole seconds", v)
		}
	}
	if v := q.Get("pool_max_conns"); v != "" {
		if n, err := strconv.Atoi(v); err != nil || n < 1 {
			return fmt.Sprintf("pool_max_conns=%q: want a whole number, at least 1", v)
		}
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Sprintf("port %q: want 1 to 65535", p)
		}
	}
	return err.Error() // pgx's own words, on the redacted URL
}
