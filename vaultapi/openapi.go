package vaultapi

import (
	_ "embed"
	"net/http"
)

// OpenAPI is the OpenAPI 3 document of every route this package serves,
// served at /openapi.yaml. A test keeps it and the router in agreement.
//
//go:embed openapi.yaml
var OpenAPI []byte

func serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml; charset=utf-8")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(OpenAPI)
}
