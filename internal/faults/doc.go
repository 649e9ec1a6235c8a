// Package faults is the plumbing of keybroker's fault-injection tests:
// things a test starts itself so that it may break them — a private
// PostgreSQL cluster it stops and restarts, the keybroker binary it
// SIGKILLs, a KMS it takes away — and the checks that run afterwards
// (the vault table's CHECK constraints, every vault still unwrapping).
//
// Nothing here touches a shared resource: the machine's PostgreSQL keeps
// serving the other tests while a private cluster goes down, every
// listener is on 127.0.0.1, and every wait is bounded.
package faults
