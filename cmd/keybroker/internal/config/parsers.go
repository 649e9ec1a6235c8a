package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/keybroker/keybroker/broker"
)

// The parsers the settings table's entries apply: text, booleans, durations, counts, rates and ages, each refusing with the fix.

// SplitList splits a list given in one variable by spaces or commas.
func SplitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' })
}

// text, boolean and duration make the apply of a setting that stores its
// value, parsed, in the field the function returns.
func text(field func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error {
		*field(c) = v
		return nil
	}
}

func boolean(field func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) (err error) {
		*field(c), err = parseBool(v)
		return err
	}
}

func duration(field func(*Config) *time.Duration, least, most time.Duration) func(*Config, string) error {
	return func(c *Config, v string) (err error) {
		*field(c), err = parseDuration(v, least, most)
		return err
	}
}

func parseBool(v string) (bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%q: want true or false", v)
	}
	return b, nil
}

// parseDuration reads a Go duration of at least least and, when most is
// positive, at most most.
func parseDuration(v string, least, most time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	switch {
	case err != nil:
		return 0, fmt.Errorf("%q: want a duration such as 30s, 5m or 1h", v)
	case most > 0 && (d < least || d > most):
		return 0, fmt.Errorf("must be between %s and %s, not %s", least, most, v)
	case d < least:
		return 0, fmt.Errorf("must be at least %s, not %s", fmtDuration(least), v)
	}
	return d, nil
}

// fmtDuration drops the zero units Go writes: 1m, not 1m0s.
func fmtDuration(d time.Duration) string {
	s := d.String()
	s, _ = strings.CutSuffix(s, "m0s")
	if s != d.String() {
		return s + "m"
	}
	return s
}

// parseBatch reads a re-wrap batch size, within the job's own limits.
func parseBatch(v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > broker.MaxRewrapBatchSize {
		return 0, fmt.Errorf("%q: want a whole number of rows between 1 and %d", v, broker.MaxRewrapBatchSize)
	}
	return n, nil
}

// parseCount reads a whole number between least and most.
func parseCount(v string, least, most int, unit string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < least || n > most {
		return 0, fmt.Errorf("%q: want a whole number of %s between %d and %d", v, unit, least, most)
	}
	return n, nil
}

// parseRate reads a rate: a number, not negative, 0 for no limit.
func parseRate(v, unit string) (float64, error) {
	r, err := strconv.ParseFloat(v, 64)
	switch {
	case err != nil || math.IsNaN(r) || math.IsInf(r, 0):
		return 0, fmt.Errorf("%q: want %s", v, unit)
	case r < 0:
		return 0, fmt.Errorf("must not be negative, not %s (0 disables the limit)", v)
	}
	return r, nil
}

// parseAge reads a duration: Go's syntax (2160h, 90m) or whole days (90d);
// "0" is zero. Negative ages are refused.
func parseAge(s string) (time.Duration, error) {
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n > 100*366 {
			return 0, fmt.Errorf("%q: want whole days (90d) or a Go duration (2160h)", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%q: want whole days (90d) or a Go duration (2160h)", s)
		}
	}
	if d < 0 {
		return 0, fmt.Errorf("%q: must not be negative", s)
	}
	return d, nil
}
