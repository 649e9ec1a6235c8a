// The client side of zero-knowledge mode, byte for byte as the original
// service's web app did it (and as keybroker's Go client does, see
// client/recovery.go):
//
//   - a recovery secret is 32 random bytes, shown to the user as its 64
//     hex digits in upper case, in 16 groups of 4 joined by dashes;
//   - HKDF-SHA256 over the secret, empty salt, info "mana-recovery-v1",
//     gives a 32-byte AES-256-GCM key;
//   - the master key is sealed under it with a random 12-byte IV, the
//     16-byte tag appended (48 bytes), no additional data.
//
// The server stores the sealed key and the IV and never sees the secret.

import { type Bytes, copyBytes, toHex, utf8, wipe } from "./bytes.js";
import { KeybrokerError, RecoveryCodeFormatError, WrongRecoveryCodeError } from "./errors.js";

/** Length in bytes of a master key. */
export const MASTER_KEY_SIZE = 32;
/** Length in bytes of a recovery secret. */
export const RECOVERY_SECRET_SIZE = 32;
/** Length in bytes of a recovery wrap's IV. */
export const RECOVERY_IV_SIZE = 12;
/** Length in bytes of a recovery-wrapped master key: the key and the GCM tag. */
export const RECOVERY_WRAP_SIZE = MASTER_KEY_SIZE + 16;
/** Length in bytes of a key possession proof. */
export const KEY_PROOF_SIZE = 32;

/** HKDF info of the recovery key. */
export const RECOVERY_HKDF_INFO = "mana-recovery-v1";
/** The message the key possession proof authenticates. */
export const KEY_PROOF_LABEL = "keybroker key possession proof v1";

const GROUP_SIZE = 4;

/** A recovery wrap as the server stores it. */
export interface RecoveryWrap {
  /** The master key sealed under the recovery key: 48 bytes. */
  recoveryWrappedMk: Uint8Array;
  /** The AES-GCM IV: 12 bytes. */
  recoveryIv: Uint8Array;
}

function subtle(): SubtleCrypto {
  const s = globalThis.crypto?.subtle;
  if (!s) {
    // Browsers expose crypto.subtle only in secure contexts: https, or
    // http on localhost.
    throw new KeybrokerError("keybroker: WebCrypto (crypto.subtle) is not available: serve the page over https");
  }
  return s;
}

function checkLength(what: string, bytes: Uint8Array, want: number): void {
  if (bytes.length !== want) {
    throw new KeybrokerError(`keybroker: a ${what} is ${want} bytes, got ${bytes.length}`);
  }
}

/** Fresh random bytes from the platform's CSPRNG. */
export function randomBytes(n: number): Bytes {
  return crypto.getRandomValues(new Uint8Array(n));
}

/**
 * The recovery code of a secret: its 64 hex digits in upper case, as 16
 * groups of 4 separated by dashes ("1D38-2010-…-8FD9").
 */
export function formatRecoveryCode(secret: Uint8Array): string {
  checkLength("recovery secret", secret, RECOVERY_SECRET_SIZE);
  const digits = toHex(secret).toUpperCase();
  const groups: string[] = [];
  for (let i = 0; i < digits.length; i += GROUP_SIZE) {
    groups.push(digits.slice(i, i + GROUP_SIZE));
  }
  return groups.join("-");
}

/** A fresh recovery secret and the code the user writes down. */
export function generateRecoveryCode(): { secret: Bytes; code: string } {
  const secret = randomBytes(RECOVERY_SECRET_SIZE);
  return { secret, code: formatRecoveryCode(secret) };
}

/**
 * The secret of a recovery code. It tolerates what people do when they
 * copy a code — lower case, and dashes, spaces, tabs or line breaks
 * anywhere — but what remains must be exactly 64 hex digits. It throws
 * RecoveryCodeFormatError, whose message never repeats the code.
 */
export function parseRecoveryCode(code: string): Bytes {
  const digits: number[] = [];
  let position = 0;
  for (const ch of code) {
    position++;
    if (ch === "-" || ch === " " || ch === "\t" || ch === "\n" || ch === "\r") {
      continue;
    }
    const v = parseInt(ch, 16);
    if (ch.length !== 1 || Number.isNaN(v) || !/[0-9a-fA-F]/.test(ch)) {
      throw new RecoveryCodeFormatError(
        `keybroker: recovery code: the character at position ${position} is not a hexadecimal digit, dash or space`,
      );
    }
    digits.push(v);
  }
  if (digits.length !== 2 * RECOVERY_SECRET_SIZE) {
    const n = digits.length;
    digits.fill(0);
    throw new RecoveryCodeFormatError(
      `keybroker: recovery code: it has ${n} hexadecimal digits, want ${2 * RECOVERY_SECRET_SIZE} (16 groups of 4)`,
    );
  }
  const secret = new Uint8Array(RECOVERY_SECRET_SIZE);
  for (let i = 0; i < RECOVERY_SECRET_SIZE; i++) {
    secret[i] = (digits[2 * i]! << 4) | digits[2 * i + 1]!;
  }
  digits.fill(0);
  return secret;
}

/**
 * The AES-256-GCM key of a recovery secret: HKDF-SHA256 with an empty
 * salt and info "mana-recovery-v1". Non-extractable unless asked (the
 * known-answer tests export it).
 */
export async function deriveRecoveryKey(secret: Uint8Array, options: { extractable?: boolean } = {}): Promise<CryptoKey> {
  checkLength("recovery secret", secret, RECOVERY_SECRET_SIZE);
  const s = subtle();
  const ikm = copyBytes(secret);
  try {
    const base = await s.importKey("raw", ikm, "HKDF", false, ["deriveKey"]);
    return await s.deriveKey(
      { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: utf8(RECOVERY_HKDF_INFO) },
      base,
      { name: "AES-GCM", length: 256 },
      options.extractable ?? false,
      ["encrypt", "decrypt"],
    );
  } finally {
    wipe(ikm);
  }
}

/**
 * Seals the 32-byte master key under the recovery secret: AES-256-GCM
 * with the derived key, a random 12-byte IV, the tag appended.
 */
export async function wrapWithRecovery(masterKey: Uint8Array, secret: Uint8Array): Promise<RecoveryWrap> {
  checkLength("master key", masterKey, MASTER_KEY_SIZE);
  const key = await deriveRecoveryKey(secret);
  const iv = randomBytes(RECOVERY_IV_SIZE);
  const plain = copyBytes(masterKey);
  try {
    const sealed = await subtle().encrypt({ name: "AES-GCM", iv }, key, plain);
    return { recoveryWrappedMk: new Uint8Array(sealed), recoveryIv: iv };
  } finally {
    wipe(plain);
  }
}

/**
 * Opens a recovery wrap with the recovery secret and returns the master
 * key. It throws WrongRecoveryCodeError when the wrap does not open with
 * this secret.
 */
export async function unwrapWithRecovery(wrap: RecoveryWrap, secret: Uint8Array): Promise<Bytes> {
  checkLength("recovery IV", wrap.recoveryIv, RECOVERY_IV_SIZE);
  checkLength("recovery-wrapped master key", wrap.recoveryWrappedMk, RECOVERY_WRAP_SIZE);
  const key = await deriveRecoveryKey(secret);
  let plain: ArrayBuffer;
  try {
    plain = await subtle().decrypt({ name: "AES-GCM", iv: copyBytes(wrap.recoveryIv) }, key, copyBytes(wrap.recoveryWrappedMk));
  } catch {
    // WebCrypto says OperationError for a tag that does not verify.
    throw new WrongRecoveryCodeError();
  }
  return new Uint8Array(plain);
}

/**
 * The key possession proof of a master key: HMAC-SHA256 keyed with the
 * master key over the ASCII label "keybroker key possession proof v1",
 * 32 bytes. keybroker wants it (as keyProof) to replace the recovery wrap
 * of a zero-knowledge vault: it shows that the caller holds the key
 * without sending it.
 */
export async function keyProof(masterKey: Uint8Array): Promise<Bytes> {
  checkLength("master key", masterKey, MASTER_KEY_SIZE);
  const s = subtle();
  const raw = copyBytes(masterKey);
  try {
    const key = await s.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    return new Uint8Array(await s.sign("HMAC", key, utf8(KEY_PROOF_LABEL)));
  } finally {
    wipe(raw);
  }
}

/** The default usages of the master key's CryptoKey. */
export const DEFAULT_KEY_USAGES: readonly KeyUsage[] = ["encrypt", "decrypt"];

/**
 * Imports a 32-byte master key as a non-extractable AES-256-GCM CryptoKey:
 * scripts on the page can use it but never read its bytes, and it can be
 * kept in IndexedDB as it is (structured clone keeps it non-extractable).
 */
export async function importMasterKey(masterKey: Uint8Array, usages: readonly KeyUsage[] = DEFAULT_KEY_USAGES): Promise<CryptoKey> {
  checkLength("master key", masterKey, MASTER_KEY_SIZE);
  const raw = copyBytes(masterKey);
  try {
    return await subtle().importKey("raw", raw, { name: "AES-GCM", length: 256 }, false, [...usages]);
  } finally {
    wipe(raw);
  }
}
