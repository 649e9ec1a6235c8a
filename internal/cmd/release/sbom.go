package main

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"time"
)

// The SBOM is CycloneDX 1.5 JSON, made from the build information the Go
// linker writes into every binary (what `go version -m` prints): the
// main module and every module linked in, each with its version and its
// go.sum hash. It describes the binary as shipped, not go.mod, which
// also lists test-only modules. Only the fields used are declared.

type cdxBOM struct {
	Schema       string         `json:"$schema"`
	BOMFormat    string         `json:"bomFormat"`
	SpecVersion  string         `json:"specVersion"`
	SerialNumber string         `json:"serialNumber"`
	Version      int            `json:"version"`
	Metadata     cdxMetadata    `json:"metadata"`
	Components   []cdxComponent `json:"components"`
}

type cdxMetadata struct {
	Timestamp string       `json:"timestamp"`
	Tools     cdxTools     `json:"tools"`
	Component cdxComponent `json:"component"`
}

type cdxTools struct {
	Components []cdxComponent `json:"components"`
}

type cdxComponent struct {
	BOMRef     string        `json:"bom-ref,omitempty"`
	Type       string        `json:"type"`
	Name       string        `json:"name"`
	Version    string        `json:"version,omitempty"`
	Hashes     []cdxHash     `json:"hashes,omitempty"`
	Licenses   []cdxLicense  `json:"licenses,omitempty"`
	PURL       string        `json:"purl,omitempty"`
	Properties []cdxProperty `json:"properties,omitempty"`
}

type cdxHash struct {
	Alg     string `json:"alg"`
	Content string `json:"content"`
}

type cdxLicense struct {
	License struct {
		ID string `json:"id"`
	} `json:"license"`
}

type cdxProperty struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// projectLicense is the SPDX id of keybroker's own licence (LICENSE).
const projectLicense = "Apache-2.0"

// goSumProperty carries a module's go.sum hash as go.sum writes it; the
// SHA-256 hash of the component is the same 32 bytes in hex.
const goSumProperty = "keybroker:gosum:h1"

// sbom describes the Go binary at path, which is keybroker at version
// (the main module's version in the build information is "(devel)": the
// release stamps its version with -X, not from VCS). created is the BOM's
// timestamp (the commit time, so the same commit gives the same bytes). It fails
// when the binary has no build information, or a module without a go.sum
// hash (a replaced module on the local disk, which a release must not
// contain).
func sbom(path, version string, created time.Time) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	info, err := buildinfo.Read(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	digest := sha256.Sum256(raw)
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	goVersion, _, _ := strings.Cut(info.GoVersion, " ")

	mainVersion := version
	qualifiers := "?goarch=" + purlEscape(settings["GOARCH"]) + "&goos=" + purlEscape(settings["GOOS"])
	app := cdxComponent{
		BOMRef:   goPURL(info.Main.Path, mainVersion) + qualifiers,
		Type:     "application",
		Name:     "keybroker",
		Version:  mainVersion,
		Hashes:   []cdxHash{{Alg: "SHA-256", Content: hex.EncodeToString(digest[:])}},
		Licenses: []cdxLicense{spdx(projectLicense)},
		PURL:     goPURL(info.Main.Path, mainVersion) + qualifiers,
	}
	for _, key := range []string{"GOOS", "GOARCH", "CGO_ENABLED", "GOAMD64", "GOARM64"} {
		if v, ok := settings[key]; ok {
			app.Properties = append(app.Properties, cdxProperty{"cdx:gomod:build:env:" + key, v})
		}
	}
	app.Properties = append(app.Properties,
		cdxProperty{"cdx:gomod:build:env:GOVERSION", goVersion},
		cdxProperty{"cdx:gomod:binary:hash:SHA-256", hex.EncodeToString(digest[:])})

	components := []cdxComponent{{
		// The name and purl vulnerability scanners (syft, grype, trivy)
		// match Go's standard library by.
		BOMRef:  "pkg:golang/stdlib@" + strings.TrimPrefix(goVersion, "go"),
		Type:    "library",
		Name:    "stdlib",
		Version: goVersion,
		PURL:    "pkg:golang/stdlib@" + strings.TrimPrefix(goVersion, "go"),
	}}
	for _, dep := range info.Deps {
		c, err := moduleComponent(dep)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		components = append(components, c)
	}

	bom := cdxBOM{
		Schema:       "http://cyclonedx.org/schema/bom-1.5.schema.json",
		BOMFormat:    "CycloneDX",
		SpecVersion:  "1.5",
		SerialNumber: "urn:uuid:" + uuidV5(hex.EncodeToString(digest[:])),
		Version:      1,
		Metadata: cdxMetadata{
			Timestamp: created.UTC().Format(time.RFC3339),
			Tools: cdxTools{Components: []cdxComponent{{
				Type: "application", Name: "keybroker-release", Version: mainVersion,
			}}},
			Component: app,
		},
		Components: components,
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false) // purls keep their "&" readable
	enc.SetIndent("", "  ")
	if err := enc.Encode(bom); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// moduleComponent is a linked module as a CycloneDX library; a replaced
// module is described by its replacement, which is what was linked.
func moduleComponent(dep *debug.Module) (cdxComponent, error) {
	m := dep
	if dep.Replace != nil {
		m = dep.Replace
	}
	sum, ok := strings.CutPrefix(m.Sum, "h1:")
	h1, err := base64.StdEncoding.DecodeString(sum)
	if !ok || err != nil || len(h1) != sha256.Size {
		return cdxComponent{}, fmt.Errorf("module %s@%s has no go.sum hash (%q)", m.Path, m.Version, m.Sum)
	}
	c := cdxComponent{
		BOMRef:     goPURL(m.Path, m.Version),
		Type:       "library",
		Name:       m.Path,
		Version:    m.Version,
		Hashes:     []cdxHash{{Alg: "SHA-256", Content: hex.EncodeToString(h1)}},
		PURL:       goPURL(m.Path, m.Version),
		Properties: []cdxProperty{{goSumProperty, m.Sum}},
	}
	if dep.Replace != nil {
		c.Properties = append(c.Properties, cdxProperty{"keybroker:gomod:replaces", dep.Path + "@" + dep.Version})
	}
	return c, nil
}

func spdx(id string) cdxLicense {
	var l cdxLicense
	l.License.ID = id
	return l
}

// goPURL is the package URL of a Go module version.
func goPURL(path, version string) string {
	segments := strings.Split(path, "/")
	for i, s := range segments {
		segments[i] = purlEscape(s)
	}
	return "pkg:golang/" + strings.Join(segments, "/") + "@" + purlEscape(version)
}

// purlEscape percent-encodes all but the unreserved characters of RFC 3986
// ("+dirty" becomes "%2Bdirty").
func purlEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '.', c == '_', c == '~':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// uuidV5 is the RFC 4122 name-based (SHA-1) UUID of name in the URL
// namespace: a serial number that is the same for the same binary.
func uuidV5(name string) string {
	namespaceURL := []byte{0x6b, 0xa7, 0xb8, 0x11, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8}
	h := sha1.New()
	h.Write(namespaceURL)
	h.Write([]byte("keybroker:sha256:" + name))
	u := h.Sum(nil)[:16]
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	x := hex.EncodeToString(u)
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}
