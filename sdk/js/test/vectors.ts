// The known-answer vectors of the original service's browser crypto,
// computed with WebCrypto: testdata/legacy-vectors.json at the root of the
// repository (the same file as the project's shared/testdata). Tests run
// with the package as working directory; KEYBROKER_LEGACY_VECTORS names
// another copy.

import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";

export interface RecoveryVector {
  name: string;
  recovery_secret_hex: string;
  recovery_code: string;
  hkdf: { hash: string; salt: string; info: string; length_bytes: number };
  derived_wrap_key_base64: string;
  master_key_base64: string;
  recoveryIv: string;
  recoveryWrappedMk: string;
}

export function recoveryVectors(): RecoveryVector[] {
  const path = process.env.KEYBROKER_LEGACY_VECTORS ?? resolve(process.cwd(), "../../testdata/legacy-vectors.json");
  const doc = JSON.parse(readFileSync(path, "utf8")) as { recovery_wrap_v1: RecoveryVector[] };
  if (!Array.isArray(doc.recovery_wrap_v1) || doc.recovery_wrap_v1.length === 0) {
    throw new Error(`${path}: no recovery_wrap_v1 vectors`);
  }
  return doc.recovery_wrap_v1;
}

export function b64(s: string): Uint8Array<ArrayBuffer> {
  return new Uint8Array(Buffer.from(s, "base64"));
}

export function hex(s: string): Uint8Array<ArrayBuffer> {
  return new Uint8Array(Buffer.from(s, "hex"));
}

export interface GrantVector {
  name: string;
  master_key_base64: string;
  derivation: { version: string; missionId: string; tables: string[]; recordIds: string[] };
  info: string;
  mdk_base64: string;
}

export interface RecordVector {
  recordId: string;
  iv_base64: string;
  additional_data: string | null;
  ciphertext_base64: string;
  plaintext: string;
}

/** A file of the repository's testdata: beside KEYBROKER_LEGACY_VECTORS when that names a copy. */
function testdata(name: string): string {
  const legacy = process.env.KEYBROKER_LEGACY_VECTORS;
  return legacy ? resolve(dirname(legacy), name) : resolve(process.cwd(), "../../testdata", name);
}

/** testdata/grant-vectors.json: the upstream's mission key derivation, computed with WebCrypto. */
export function grantVectors(): GrantVector[] {
  const doc = JSON.parse(readFileSync(testdata("grant-vectors.json"), "utf8")) as { vectors: GrantVector[] };
  if (!Array.isArray(doc.vectors) || doc.vectors.length === 0) {
    throw new Error("grant-vectors.json: no vectors");
  }
  return doc.vectors;
}

/** testdata/grant-record-vectors.json: records encrypted under a grant vector's mission key. */
export function recordVectors(): { of: string; records: RecordVector[] } {
  return JSON.parse(readFileSync(testdata("grant-record-vectors.json"), "utf8")) as { of: string; records: RecordVector[] };
}
