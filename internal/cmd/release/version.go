package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Source is the commit a release is built from and the version it gets.
type Source struct {
	// Version is the semantic-version tag at the commit (vX.Y.Z), else a
	// Go pseudo-version after the newest tag below it; "+dirty" is
	// appended when the checkout has uncommitted changes.
	Version string
	// Commit is the full hexadecimal commit id.
	Commit string
	// Time is the commit's committer time, in UTC.
	Time time.Time
	// Dirty is true when tracked or untracked files differ from the commit.
	Dirty bool
}

// describe reads dir's git checkout and names its version the way the go
// command does for a module version (https://go.dev/ref/mod#pseudo-versions),
// so `keybroker version` of a release binary and of
// `go install github.com/keybroker/keybroker/cmd/keybroker@<commit>` agree:
//
//   - a vX.Y.Z tag at the commit: that tag;
//   - else, after the highest vX.Y.Z tag reachable from it: vX.Y.(Z+1)-0.<time>-<hash>;
//   - after a pre-release tag vX.Y.Z-pre: vX.Y.Z-pre.0.<time>-<hash>;
//   - without any tag: v0.0.0-<time>-<hash>,
//
// where <time> is the commit time in UTC (yyyymmddhhmmss) and <hash> the
// first 12 hex digits of the commit. Never a bare short hash, which
// neither sorts nor says how old a build is. git describe's
// vX.Y.Z-N-gHASH is not used: as a semantic version it is a pre-release
// that sorts before the vX.Y.Z it follows.
func describe(ctx context.Context, dir string) (Source, error) {
	commit, err := git(ctx, dir, "rev-parse", "--verify", "HEAD^{commit}")
	if err != nil {
		return Source{}, err
	}
	unix, err := git(ctx, dir, "log", "-1", "--format=%ct", commit)
	if err != nil {
		return Source{}, err
	}
	secs, err := strconv.ParseInt(unix, 10, 64)
	if err != nil {
		return Source{}, fmt.Errorf("commit time %q: %w", unix, err)
	}
	status, err := git(ctx, dir, "status", "--porcelain")
	if err != nil {
		return Source{}, err
	}
	atCommit, err := git(ctx, dir, "tag", "--points-at", commit, "--list", "v*")
	if err != nil {
		return Source{}, err
	}
	reachable, err := git(ctx, dir, "tag", "--merged", commit, "--list", "v*")
	if err != nil {
		return Source{}, err
	}
	src := Source{Commit: commit, Time: time.Unix(secs, 0).UTC(), Dirty: status != ""}
	if tag := highestSemver(strings.Fields(atCommit)); tag != "" {
		src.Version = tag
	} else {
		src.Version = pseudoVersion(highestSemver(strings.Fields(reachable)), src.Time, commit)
	}
	if src.Dirty {
		src.Version += "+dirty"
	}
	return src, nil
}

// git runs git in dir and returns its trimmed standard output.
func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// pseudoVersion is the go command's pseudo-version of a commit made at t
// after the tag base ("" when there is none).
func pseudoVersion(base string, t time.Time, commit string) string {
	stamp := t.UTC().Format("20060102150405")
	hash := commit
	if len(hash) > 12 {
		hash = hash[:12]
	}
	v, ok := parseSemver(base)
	switch {
	case !ok:
		return "v0.0.0-" + stamp + "-" + hash
	case v.pre != "":
		return fmt.Sprintf("v%d.%d.%d-%s.0.%s-%s", v.major, v.minor, v.patch, v.pre, stamp, hash)
	default:
		return fmt.Sprintf("v%d.%d.%d-0.%s-%s", v.major, v.minor, v.patch+1, stamp, hash)
	}
}

// semverRE is a semantic version tag as Go modules use them: vMAJOR.MINOR.PATCH
// with an optional pre-release, without build metadata.
var semverRE = regexp.MustCompile(`^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(?:-((?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*))?$`)

type semver struct {
	major, minor, patch uint64
	pre                 string
}

func parseSemver(s string) (semver, bool) {
	m := semverRE.FindStringSubmatch(s)
	if m == nil {
		return semver{}, false
	}
	var v semver
	var err error
	for i, dst := range []*uint64{&v.major, &v.minor, &v.patch} {
		if *dst, err = strconv.ParseUint(m[i+1], 10, 64); err != nil {
			return semver{}, false
		}
	}
	v.pre = m[4]
	return v, true
}

// compare orders two versions by semantic-version precedence.
func (v semver) compare(w semver) int {
	for _, d := range [][2]uint64{{v.major, w.major}, {v.minor, w.minor}, {v.patch, w.patch}} {
		if d[0] != d[1] {
			if d[0] < d[1] {
				return -1
			}
			return 1
		}
	}
	switch {
	case v.pre == w.pre:
		return 0
	case v.pre == "":
		return 1 // a release follows its pre-releases
	case w.pre == "":
		return -1
	}
	a, b := strings.Split(v.pre, "."), strings.Split(w.pre, ".")
	for i := 0; i < len(a) && i < len(b); i++ {
		if c := comparePrerelease(a[i], b[i]); c != 0 {
			return c
		}
	}
	switch {
	case len(a) < len(b):
		return -1
	case len(a) > len(b):
		return 1
	}
	return 0
}

// comparePrerelease orders two pre-release identifiers: numeric ones
// numerically and before alphanumeric ones, those in ASCII order.
func comparePrerelease(a, b string) int {
	an, aErr := strconv.ParseUint(a, 10, 64)
	bn, bErr := strconv.ParseUint(b, 10, 64)
	switch {
	case aErr == nil && bErr == nil:
		switch {
		case an < bn:
			return -1
		case an > bn:
			return 1
		}
		return 0
	case aErr == nil:
		return -1
	case bErr == nil:
		return 1
	}
	return strings.Compare(a, b)
}

// highestSemver is the highest valid semantic version among tags, or "".
func highestSemver(tags []string) string {
	best, bestV := "", semver{}
	for _, tag := range tags {
		v, ok := parseSemver(tag)
		if ok && (best == "" || v.compare(bestV) > 0) {
			best, bestV = tag, v
		}
	}
	return best
}
