// Package testkit holds, below it, the kits that the tests of several
// packages share: apitest (a real keybroker over HTTP), kmstest (local-kms
// and in-process fakes of Cloud KMS and Vault Transit speaking the real
// protocols), pgtest (a database of its own on the test PostgreSQL) and
// testvectors (fixed inputs and their expected outputs).
//
// Production code never imports anything below internal/testkit
// (internal/securityaudit checks it). Production code that tests also use
// (internal/jwtissuer, the issuer of `serve --dev`) therefore lives outside
// this directory.
package testkit
