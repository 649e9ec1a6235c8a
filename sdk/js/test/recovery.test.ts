import assert from "node:assert/strict";
import { createDecipheriv, createHmac } from "node:crypto";
import { describe, test } from "node:test";

import {
  deriveRecoveryKey,
  formatRecoveryCode,
  generateRecoveryCode,
  importMasterKey,
  keyProof,
  KEY_PROOF_LABEL,
  parseRecoveryCode,
  RECOVERY_HKDF_INFO,
  RecoveryCodeFormatError,
  unwrapWithRecovery,
  wrapWithRecovery,
  WrongRecoveryCodeError,
} from "../dist/index.js";
import { b64, hex, recoveryVectors } from "./vectors.js";

const vectors = recoveryVectors();

describe("recovery code format", () => {
  for (const v of vectors) {
    test(`${v.name}: the secret is shown as the original service showed it`, () => {
      assert.equal(formatRecoveryCode(hex(v.recovery_secret_hex)), v.recovery_code);
      assert.match(v.recovery_code, /^[0-9A-F]{4}(-[0-9A-F]{4}){15}$/);
    });
    test(`${v.name}: the code parses back, however it was copied`, () => {
      const secret = hex(v.recovery_secret_hex);
      assert.deepEqual(parseRecoveryCode(v.recovery_code), secret);
      assert.deepEqual(parseRecoveryCode(v.recovery_code.toLowerCase()), secret);
      assert.deepEqual(parseRecoveryCode(v.recovery_code.replaceAll("-", " ")), secret);
      assert.deepEqual(parseRecoveryCode(v.recovery_code.replaceAll("-", "")), secret);
      assert.deepEqual(parseRecoveryCode(`  ${v.recovery_code.slice(0, 39)}\r\n${v.recovery_code.slice(40)}\t`), secret);
    });
  }

  test("a fresh code is 32 random bytes as 16 dashed groups", () => {
    const a = generateRecoveryCode();
    const b = generateRecoveryCode();
    assert.equal(a.secret.length, 32);
    assert.match(a.code, /^[0-9A-F]{4}(-[0-9A-F]{4}){15}$/);
    assert.deepEqual(parseRecoveryCode(a.code), a.secret);
    assert.notEqual(a.code, b.code);
  });

  test("malformed codes are refused without repeating them", () => {
    const code = vectors[0]!.recovery_code;
    const cases: [string, RegExp][] = [
      [code.slice(0, -1), /63 hexadecimal digits, want 64/],
      [code + "0", /65 hexadecimal digits/],
      ["", /0 hexadecimal digits/],
      [code.slice(0, 10) + "G" + code.slice(11), /position 11 is not a hexadecimal digit/],
      [code.replace("-", "_"), /position 5/],
      [code.replace("-", "é"), /position 5/],
    ];
    for (const [input, message] of cases) {
      assert.throws(() => parseRecoveryCode(input), (e: unknown) => {
        assert.ok(e instanceof RecoveryCodeFormatError, String(e));
        assert.match(e.message, message);
        assert.ok(!e.message.includes(code.slice(0, 9)), "the message repeats the code");
        return true;
      });
    }
  });

  test("formatRecoveryCode refuses a secret of another length", () => {
    assert.throws(() => formatRecoveryCode(new Uint8Array(31)), /32 bytes, got 31/);
  });
});

describe("HKDF-SHA256 recipe and the AES-GCM recovery wrap", () => {
  for (const v of vectors) {
    test(`${v.name}: the vector's recipe is the SDK's`, () => {
      assert.deepEqual(v.hkdf, { hash: "SHA-256", salt: "", info: RECOVERY_HKDF_INFO, length_bytes: 32 });
    });
    test(`${v.name}: HKDF derives the original's wrap key`, async () => {
      const key = await deriveRecoveryKey(hex(v.recovery_secret_hex), { extractable: true });
      const raw = new Uint8Array(await crypto.subtle.exportKey("raw", key));
      assert.deepEqual(raw, b64(v.derived_wrap_key_base64));
      assert.deepEqual(key.algorithm, { name: "AES-GCM", length: 256 });
    });
    test(`${v.name}: the derived key is not extractable by default`, async () => {
      const key = await deriveRecoveryKey(hex(v.recovery_secret_hex));
      assert.equal(key.extractable, false);
      await assert.rejects(crypto.subtle.exportKey("raw", key));
    });
    test(`${v.name}: the original's wrap opens to its master key`, async () => {
      const mk = await unwrapWithRecovery(
        { recoveryWrappedMk: b64(v.recoveryWrappedMk), recoveryIv: b64(v.recoveryIv) },
        parseRecoveryCode(v.recovery_code),
      );
      assert.deepEqual(mk, b64(v.master_key_base64));
    });
    test(`${v.name}: a wrap the SDK makes is the original's format`, async () => {
      const mk = b64(v.master_key_base64);
      const wrap = await wrapWithRecovery(mk, hex(v.recovery_secret_hex));
      assert.equal(wrap.recoveryIv.length, 12);
      assert.equal(wrap.recoveryWrappedMk.length, 48);
      // Opened with Node's own AES-GCM under the vector's derived key:
      // ciphertext then a 16-byte tag, no additional data.
      const decipher = createDecipheriv("aes-256-gcm", b64(v.derived_wrap_key_base64), wrap.recoveryIv);
      decipher.setAuthTag(wrap.recoveryWrappedMk.subarray(32));
      const opened = Buffer.concat([decipher.update(wrap.recoveryWrappedMk.subarray(0, 32)), decipher.final()]);
      assert.deepEqual(new Uint8Array(opened), mk);
      assert.deepEqual(await unwrapWithRecovery(wrap, hex(v.recovery_secret_hex)), mk);
    });
  }

  test("another code or a tampered wrap does not open", async () => {
    const [a, b] = vectors;
    const wrap = { recoveryWrappedMk: b64(a!.recoveryWrappedMk), recoveryIv: b64(a!.recoveryIv) };
    await assert.rejects(unwrapWithRecovery(wrap, parseRecoveryCode(b!.recovery_code)), WrongRecoveryCodeError);
    const tampered = { ...wrap, recoveryWrappedMk: wrap.recoveryWrappedMk.slice() };
    tampered.recoveryWrappedMk[47]! ^= 1;
    await assert.rejects(unwrapWithRecovery(tampered, parseRecoveryCode(a!.recovery_code)), WrongRecoveryCodeError);
  });

  test("wrong lengths are refused before any crypto", async () => {
    const secret = new Uint8Array(32);
    await assert.rejects(wrapWithRecovery(new Uint8Array(31), secret), /master key is 32 bytes, got 31/);
    await assert.rejects(
      unwrapWithRecovery({ recoveryWrappedMk: new Uint8Array(48), recoveryIv: new Uint8Array(16) }, secret),
      /recovery IV is 12 bytes, got 16/,
    );
    await assert.rejects(
      unwrapWithRecovery({ recoveryWrappedMk: new Uint8Array(47), recoveryIv: new Uint8Array(12) }, secret),
      /48 bytes, got 47/,
    );
  });
});

describe("key possession proof", () => {
  // Computed by keybroker's Go client (client.KeyProof) from the vectors'
  // master keys.
  const known: Record<string, string> = {
    "recovery/1": "a4Uu62SGEZ0KQRKZQvbxC7zEyhQotEugtzPAI1ztY1Y=",
    "recovery/2": "Mmk40cWNezG0k19C3/qGEK20ChZe1SGqeZDgZASDXAU=",
    "recovery/3": "5VtX942KvJWoO7ohzRWqZh/+PvyMXcQoD9L36tInZco=",
  };
  for (const v of vectors) {
    test(`${v.name}: HMAC-SHA256(key = master key, "${KEY_PROOF_LABEL}")`, async () => {
      const mk = b64(v.master_key_base64);
      const proof = await keyProof(mk);
      const expected = createHmac("sha256", mk).update("keybroker key possession proof v1").digest();
      assert.deepEqual(proof, new Uint8Array(expected));
      if (known[v.name]) {
        assert.equal(Buffer.from(proof).toString("base64"), known[v.name]);
      }
    });
  }
});

describe("the master key as a CryptoKey", () => {
  test("non-extractable AES-256-GCM, and it is the key", async () => {
    const mk = b64(vectors[0]!.master_key_base64);
    const key = await importMasterKey(mk);
    assert.equal(key.extractable, false);
    assert.deepEqual(key.algorithm, { name: "AES-GCM", length: 256 });
    assert.deepEqual([...key.usages].sort(), ["decrypt", "encrypt"]);
    await assert.rejects(crypto.subtle.exportKey("raw", key));
    const iv = new Uint8Array(12);
    const sealed = await crypto.subtle.encrypt({ name: "AES-GCM", iv }, key, new TextEncoder().encode("hello"));
    const byRaw = await crypto.subtle.importKey("raw", mk, "AES-GCM", false, ["decrypt"]);
    assert.equal(new TextDecoder().decode(await crypto.subtle.decrypt({ name: "AES-GCM", iv }, byRaw, sealed)), "hello");
    const wrapping = await importMasterKey(mk, ["wrapKey", "unwrapKey"]);
    assert.deepEqual([...wrapping.usages].sort(), ["unwrapKey", "wrapKey"]);
  });
});
