// Package securityaudit holds the repository-wide checks of security
// properties that live in the source and the documentation rather than in
// one package's behaviour: secrets are compared in constant time, and
// every row of the threat model (docs/security.md) names a test that
// exists. It also holds the checks of the layout those properties rest
// on, from ../shared/design/STYLE.md: imports point the way it says,
// production code never imports a test kit, SDKs and drivers stay behind
// their adapters, only the commands read flags and the environment,
// providers assert their abilities at compile time, there are no init()
// registries, and no Go file grows past 500 lines without a written
// reason. It has no code; its tests read the repository.
package securityaudit
