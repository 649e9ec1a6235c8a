// Byte helpers without Buffer, so that the package runs unchanged in
// browsers, workers and Node 20+.

/** Bytes backed by a plain ArrayBuffer, as WebCrypto takes them. */
export type Bytes = Uint8Array<ArrayBuffer>;

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Standard base64 with padding, as keybroker sends and expects it. */
export function toBase64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/**
 * Decodes standard base64 with padding, strictly: atob alone would accept
 * white space and missing padding. Returns null when s is not base64.
 */
export function fromBase64(s: string): Bytes | null {
  if (!BASE64_RE.test(s)) {
    return null;
  }
  const binary = atob(s);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) {
    out[i] = binary.charCodeAt(i);
  }
  return out;
}

/** Lower-case hexadecimal. */
export function toHex(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) {
    s += b.toString(16).padStart(2, "0");
  }
  return s;
}

/** UTF-8 bytes of s. */
export function utf8(s: string): Bytes {
  return new TextEncoder().encode(s) as Bytes;
}

/** A copy of bytes in a fresh ArrayBuffer (WebCrypto wants one). */
export function copyBytes(bytes: Uint8Array): Bytes {
  const out = new Uint8Array(bytes.length);
  out.set(bytes);
  return out;
}

/**
 * Overwrites bytes with zeros. JavaScript gives no guarantee that no
 * other copy exists (the engine may have made one, and strings cannot be
 * wiped), but a buffer the SDK owned is not left holding a key.
 */
export function wipe(...buffers: (Uint8Array | null | undefined)[]): void {
  for (const b of buffers) {
    b?.fill(0);
  }
}
