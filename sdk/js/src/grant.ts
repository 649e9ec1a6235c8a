// Mission grants: the app lets a background worker (an AI "mission"
// runner) decrypt a chosen set of records while the user's browser is
// closed. keybroker derives the mission data key from the master key and
// wraps it to the worker (Keybroker.missionGrant); the app derives the same
// key here to encrypt the mission's records (deriveMissionKey).
// docs/grants.md in keybroker's repository has the wire format.

import { type Bytes, utf8 } from "./bytes.js";
import { MASTER_KEY_SIZE } from "./recovery.js";

/** Where keybroker serves the mission grant route, below baseUrl. */
export const MISSION_GRANT_PATH = "/api/v1/me/ai-mission-grant";

/** The derivation version this SDK makes. */
export const MISSION_GRANT_VERSION = "v1";

/** What a mission grant is for: the request's scope. */
export interface MissionGrantRequest {
  /** The mission's id: the HKDF salt. */
  missionId: string;
  /** The tables the worker may read. */
  tables: readonly string[];
  /** The records it may read, each "<table>:<id>" with its table in tables; at most 1 000. */
  recordIds: readonly string[];
  /** The lifetime in milliseconds, clamped by the server to 1 hour–30 days; default 7 days. */
  ttlMs?: number | undefined;
  /**
   * The worker, by the name the server's KEYBROKER_GRANT_RECIPIENTS gives
   * it; omit it for the default worker (the upstream's grant). A named
   * worker's grant is bound to its scope, lifetime and recipient.
   */
  recipient?: string | undefined;
}

/** The scope a mission data key is derived for, its lists in the canonical order. */
export interface MissionDerivation {
  version: string;
  missionId: string;
  tables: string[];
  recordIds: string[];
}

/** A grant keybroker issued: hand `json` to the worker. */
export interface MissionGrant {
  /** The mission data key wrapped to the worker. */
  wrappedKey: Bytes;
  derivation: MissionDerivation;
  issuedAt: Date;
  expiresAt: Date;
  /** The worker's name and the wrap's algorithm; only when the request named its recipient. */
  recipient?: string;
  algorithm?: string;
  /** The server's answer as JSON, to forward to the worker as it is. */
  json: string;
}

/**
 * The canonical scope string, the HKDF info: "mana-ai-mission-grant:v1:tables=" + tables +
 * ":ids=" + recordIds, each sorted by JavaScript's default sort (UTF-16 code units) and joined
 * by ",". The lists may come in any order.
 */
export function missionGrantInfo(derivation: Pick<MissionDerivation, "tables" | "recordIds"> & { version?: string }): string {
  const tables = [...derivation.tables].sort();
  const ids = [...derivation.recordIds].sort();
  return `mana-ai-mission-grant:${derivation.version ?? MISSION_GRANT_VERSION}:tables=${tables.join(",")}:ids=${ids.join(",")}`;
}

/**
 * The mission data key of a scope under the master key's bytes: HKDF-SHA256 with the master key
 * as input key material, the UTF-8 missionId as salt and missionGrantInfo as info, as an
 * AES-256-GCM CryptoKey — the key the worker unwraps from the grant. Encrypt the mission's
 * records with it (a 12-byte IV; the record id as additionalData ties each ciphertext to its
 * record). Non-extractable unless asked.
 */
export async function deriveMissionKey(
  masterKey: Uint8Array,
  derivation: Pick<MissionDerivation, "missionId" | "tables" | "recordIds"> & { version?: string },
  options: { usages?: readonly KeyUsage[]; extractable?: boolean } = {},
): Promise<CryptoKey> {
  if (masterKey.length !== MASTER_KEY_SIZE) {
    throw new TypeError(`keybroker: a master key is ${MASTER_KEY_SIZE} bytes, got ${masterKey.length}`);
  }
  const version = derivation.version ?? MISSION_GRANT_VERSION;
  if (version !== MISSION_GRANT_VERSION) {
    throw new TypeError(`keybroker: mission grant version ${version}: this SDK knows ${MISSION_GRANT_VERSION}`);
  }
  const ikm = await crypto.subtle.importKey("raw", masterKey as Bytes, "HKDF", false, ["deriveKey"]);
  return crypto.subtle.deriveKey(
    { name: "HKDF", hash: "SHA-256", salt: utf8(derivation.missionId), info: utf8(missionGrantInfo({ ...derivation, version })) },
    ikm,
    { name: "AES-GCM", length: 256 },
    options.extractable ?? false,
    [...(options.usages ?? ["encrypt", "decrypt"])],
  );
}
