package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"

	"github.com/keybroker/keybroker/kekproviders/localkek"
)

const kekUsage = `Usage:
  keybroker kek generate    print a fresh base64 KEK (32 random bytes), the
                            replacement for "openssl rand -base64 32"
`

func cmdKEK(_ context.Context, args []string, _ func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, kekUsage)
		return errUsage
	}
	switch args[0] {
	case "generate":
		key := make([]byte, localkek.KeySize)
		rand.Read(key)
		fmt.Fprintln(stdout, base64.StdEncoding.EncodeToString(key))
		clear(key)
		return nil
	default:
		fmt.Fprintf(stderr, "keybroker kek: unknown command %q\n\n%s", args[0], kekUsage)
		return errUsage
	}
}
