// Package securityaudit holds the repository-wide checks of security
// properties that live in the source and the documentation rather than in
// one package's behaviour: secrets are compared in constant time, and
// every row of the threat model (docs/security.md) names a test that
// exists. It has no code; its tests read the repository.
package securityaudit
