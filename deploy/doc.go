// Package deploy holds keybroker's deployment files — deploy/systemd,
// deploy/compose, deploy/kubernetes and the repository's Dockerfile, and
// the monitoring in deploy/prometheus and deploy/grafana — and the tests
// that keep them honest: the files are parsed with the tools that consume
// them (systemd-analyze, compose-go, a YAML decoder, promtool, the PromQL
// parser) and their invariants checked, and the binary they start is run
// against the endpoints they probe and the metrics they read. There is no
// Go API here.
package deploy
