// Package fakegcpkms is an in-process Google Cloud KMS for tests: a gRPC
// server implementing Encrypt, Decrypt and GetCryptoKey of
// google.cloud.kms.v1.KeyManagementService with AES-256-GCM and additional
// authenticated data, on a 127.0.0.1 listener. No emulator of Cloud KMS
// can be installed, so tests drive the real client library at this.
//
// It mirrors what the provider depends on: CRC32C checksums verified when
// sent and Verified* flags set only when the field was sent (a nil check,
// since crc32c("") is 0); the service's error codes and texts; key
// versions, a primary, disabled versions and denied callers. By default it
// is stricter than Cloud KMS: a request without a checksum field is
// refused, which proves the client sends every one (Faults.Lenient turns
// that off).
//
// Tests of other packages (the re-wrap job, benchmarks) reuse it.
package fakegcpkms

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/stretchr/testify/require"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// KeyRing is the key ring every key of a fake server lives in.
const KeyRing = "projects/keybroker-test/locations/europe-west3/keyRings/keybroker"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC32C is the checksum Cloud KMS uses, as its int64 wrapper carries it.
func CRC32C(data []byte) int64 { return int64(crc32.Checksum(data, castagnoli)) }

// Faults make the server misbehave the ways the integrity checks guard
// against.
type Faults struct {
	// Lenient accepts requests without checksum fields, as Cloud KMS
	// does. The default refuses them.
	Lenient bool
	// DropVerified answers without the Verified* flags, as a server that
	// did not receive the request's checksums would.
	DropVerified bool
	// CorruptResponse flips a bit of the returned ciphertext or
	// plaintext after its checksum was computed: damage in transit.
	CorruptResponse bool
	// OmitResponseChecksum leaves ciphertext_crc32c / plaintext_crc32c
	// out of the answer.
	OmitResponseChecksum bool
}

type version struct {
	aead  cipher.AEAD
	state kmspb.CryptoKeyVersion_CryptoKeyVersionState
}

type cryptoKey struct {
	versions []*version // versions[i] is version i+1
	primary  int        // 1-based
	denied   bool
}

// Server is one fake Cloud KMS.
type Server struct {
	kmspb.UnimplementedKeyManagementServiceServer

	// Addr is host:port on 127.0.0.1.
	Addr string

	grpc     *grpc.Server
	stopOnce sync.Once
	served   chan struct{}

	mu     sync.Mutex
	keys   map[string]*cryptoKey
	faults Faults
	calls  map[string]int
}

// Start serves a fake on a fresh 127.0.0.1 port until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &Server{
		Addr:   ln.Addr().String(),
		grpc:   grpc.NewServer(),
		served: make(chan struct{}),
		keys:   map[string]*cryptoKey{},
		calls:  map[string]int{},
	}
	kmspb.RegisterKeyManagementServiceServer(s.grpc, s)
	go func() {
		defer close(s.served)
		if err := s.grpc.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("fakegcpkms: serve: %v", err)
		}
	}()
	t.Cleanup(s.Stop)
	return s
}

// Stop stops the server at once, dropping connections: afterwards the
// address refuses connections. It is safe to call twice.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		s.grpc.Stop()
		<-s.served
	})
}

// ClientOptions are the options that point the real client library at
// this server: its endpoint, no credentials, plaintext gRPC. Without the
// last one the client speaks TLS to a plaintext server and retries until
// its deadline.
func (s *Server) ClientOptions() []option.ClientOption {
	return []option.ClientOption{
		option.WithEndpoint(s.Addr),
		option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
	}
}

// CreateKey creates an ENCRYPT_DECRYPT key with one enabled version and
// returns its resource name (KeyRing + "/cryptoKeys/" + id).
func (s *Server) CreateKey(t testing.TB, id string) string {
	t.Helper()
	name := KeyRing + "/cryptoKeys/" + id
	s.mu.Lock()
	defer s.mu.Unlock()
	require.NotContains(t, s.keys, name, "key %s exists", name)
	s.keys[name] = &cryptoKey{versions: []*version{newVersion()}, primary: 1}
	return name
}

// Rotate adds a version to the key and makes it primary; older versions
// still decrypt.
func (s *Server) Rotate(t testing.TB, name string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[name]
	require.NotNil(t, k, "no key %s", name)
	k.versions = append(k.versions, newVersion())
	k.primary = len(k.versions)
}

// DisableVersion disables one version (1-based), as
// gcloud kms keys versions disable would.
func (s *Server) DisableVersion(t testing.TB, name string, v int) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[name]
	require.NotNil(t, k, "no key %s", name)
	require.True(t, v >= 1 && v <= len(k.versions), "no version %d", v)
	k.versions[v-1].state = kmspb.CryptoKeyVersion_DISABLED
}

// Deny makes every call on the key fail with PermissionDenied, as after
// the caller's IAM binding was removed.
func (s *Server) Deny(t testing.TB, name string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[name]
	require.NotNil(t, k, "no key %s", name)
	k.denied = true
}

// SetFaults replaces the server's faults.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
}

// Calls returns how many times the method ("Encrypt", "Decrypt",
// "GetCryptoKey") was called.
func (s *Server) Calls(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

func newVersion() *version {
	key := make([]byte, 32)
	rand.Read(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // a 32-byte key never fails
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return &version{aead: aead, state: kmspb.CryptoKeyVersion_ENABLED}
}

func versionName(key string, v int) string {
	return key + "/cryptoKeyVersions/" + strconv.Itoa(v)
}

// key finds a key for a call needing permission, under s.mu.
func (s *Server) key(name, permission string) (*cryptoKey, error) {
	k, ok := s.keys[name]
	if !ok {
		// Cloud KMS does not say whether a key the caller may not see
		// exists; for a caller allowed to look it says NotFound.
		return nil, status.Errorf(codes.NotFound, "CryptoKey %s not found.", name)
	}
	if k.denied {
		return nil, status.Errorf(codes.PermissionDenied, "Permission '%s' denied on resource '%s' (or it may not exist).", permission, name)
	}
	return k, nil
}

// checkCRC verifies a request checksum when sent and reports whether it
// was sent.
func (s *Server) checkCRC(field, dataField string, data []byte, sum *wrapperspb.Int64Value) (bool, error) {
	if sum == nil {
		if !s.faults.Lenient {
			return false, status.Errorf(codes.InvalidArgument, "fakegcpkms: field %s is missing: the client must send it", field)
		}
		return false, nil
	}
	if sum.GetValue() != CRC32C(data) {
		return false, status.Errorf(codes.InvalidArgument, "The checksum in field %s did not match the data in field %s.", field, dataField)
	}
	return true, nil
}

// ciphertext layout of the fake: version (4 bytes, big endian) ‖ nonce ‖
// AES-GCM sealed box. Callers must treat it as opaque, as Cloud KMS's.
const headerSize = 4

// Encrypt encrypts under the key's primary version.
func (s *Server) Encrypt(ctx context.Context, req *kmspb.EncryptRequest) (*kmspb.EncryptResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["Encrypt"]++
	k, err := s.key(req.GetName(), "cloudkms.cryptoKeyVersions.useToEncrypt")
	if err != nil {
		return nil, err
	}
	ptVerified, err := s.checkCRC("plaintext_crc32c", "plaintext", req.GetPlaintext(), req.GetPlaintextCrc32C())
	if err != nil {
		return nil, err
	}
	aadVerified, err := s.checkCRC("additional_authenticated_data_crc32c", "additional_authenticated_data", req.GetAdditionalAuthenticatedData(), req.GetAdditionalAuthenticatedDataCrc32C())
	if err != nil {
		return nil, err
	}
	if len(req.GetPlaintext()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "The request must contain a plaintext.")
	}
	v := k.versions[k.primary-1]
	vName := versionName(req.GetName(), k.primary)
	if v.state != kmspb.CryptoKeyVersion_ENABLED {
		return nil, status.Errorf(codes.FailedPrecondition, "%s is not enabled, current state is: %s.", vName, v.state)
	}
	out := binary.BigEndian.AppendUint32(nil, uint32(k.primary))
	nonce := make([]byte, v.aead.NonceSize())
	rand.Read(nonce)
	out = append(out, nonce...)
	out = v.aead.Seal(out, nonce, req.GetPlaintext(), req.GetAdditionalAuthenticatedData())

	resp := &kmspb.EncryptResponse{
		Name:                    vName,
		Ciphertext:              out,
		CiphertextCrc32C:        wrapperspb.Int64(CRC32C(out)),
		VerifiedPlaintextCrc32C: ptVerified,
		VerifiedAdditionalAuthenticatedDataCrc32C: aadVerified,
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
	}
	if s.faults.DropVerified {
		resp.VerifiedPlaintextCrc32C = false
		resp.VerifiedAdditionalAuthenticatedDataCrc32C = false
	}
	if s.faults.OmitResponseChecksum {
		resp.CiphertextCrc32C = nil
	}
	if s.faults.CorruptResponse {
		resp.Ciphertext[len(resp.Ciphertext)-1] ^= 1
	}
	return resp, nil
}

// Decrypt decrypts with whichever version made the ciphertext.
func (s *Server) Decrypt(ctx context.Context, req *kmspb.DecryptRequest) (*kmspb.DecryptResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["Decrypt"]++
	if strings.Contains(req.GetName(), "/cryptoKeyVersions/") {
		return nil, status.Errorf(codes.InvalidArgument, "Resource name [%s] does not represent a valid CryptoKey.", req.GetName())
	}
	k, err := s.key(req.GetName(), "cloudkms.cryptoKeyVersions.useToDecrypt")
	if err != nil {
		return nil, err
	}
	if _, err := s.checkCRC("ciphertext_crc32c", "ciphertext", req.GetCiphertext(), req.GetCiphertextCrc32C()); err != nil {
		return nil, err
	}
	if _, err := s.checkCRC("additional_authenticated_data_crc32c", "additional_authenticated_data", req.GetAdditionalAuthenticatedData(), req.GetAdditionalAuthenticatedDataCrc32C()); err != nil {
		return nil, err
	}
	invalid := status.Error(codes.InvalidArgument, "Decryption failed: the ciphertext is invalid.")
	ct := req.GetCiphertext()
	if len(ct) < headerSize {
		return nil, invalid
	}
	n := int(binary.BigEndian.Uint32(ct))
	if n < 1 || n > len(k.versions) {
		return nil, invalid
	}
	v := k.versions[n-1]
	if len(ct) < headerSize+v.aead.NonceSize()+v.aead.Overhead() {
		return nil, invalid
	}
	if v.state != kmspb.CryptoKeyVersion_ENABLED {
		return nil, status.Errorf(codes.FailedPrecondition, "%s is not enabled, current state is: %s.", versionName(req.GetName(), n), v.state)
	}
	nonce := ct[headerSize : headerSize+v.aead.NonceSize()]
	plaintext, err := v.aead.Open(nil, nonce, ct[headerSize+v.aead.NonceSize():], req.GetAdditionalAuthenticatedData())
	if err != nil {
		return nil, invalid
	}
	resp := &kmspb.DecryptResponse{
		Plaintext:       plaintext,
		PlaintextCrc32C: wrapperspb.Int64(CRC32C(plaintext)),
		UsedPrimary:     n == k.primary,
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
	}
	if s.faults.OmitResponseChecksum {
		resp.PlaintextCrc32C = nil
	}
	if s.faults.CorruptResponse {
		resp.Plaintext[0] ^= 1
	}
	return resp, nil
}

// GetCryptoKey returns the key's metadata and its primary version.
func (s *Server) GetCryptoKey(ctx context.Context, req *kmspb.GetCryptoKeyRequest) (*kmspb.CryptoKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["GetCryptoKey"]++
	k, err := s.key(req.GetName(), "cloudkms.cryptoKeys.get")
	if err != nil {
		return nil, err
	}
	primary := k.versions[k.primary-1]
	return &kmspb.CryptoKey{
		Name:    req.GetName(),
		Purpose: kmspb.CryptoKey_ENCRYPT_DECRYPT,
		Primary: &kmspb.CryptoKeyVersion{
			Name:            versionName(req.GetName(), k.primary),
			State:           primary.state,
			ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
			Algorithm:       kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION,
		},
		VersionTemplate: &kmspb.CryptoKeyVersionTemplate{
			ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
			Algorithm:       kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION,
		},
	}, nil
}

// String names the server in test output.
func (s *Server) String() string { return fmt.Sprintf("fakegcpkms at %s", s.Addr) }
