// Package deploy holds keybroker's deployment files — deploy/systemd,
// deploy/compose, deploy/kubernetes and the repository's Dockerfile — and
// the tests that keep them honest: the files are parsed with the tools
// that consume them (systemd-analyze, compose-go, a YAML decoder) and
// their invariants checked, and the binary they start is run against the
// endpoints they probe. There is no Go API here.
package deploy
