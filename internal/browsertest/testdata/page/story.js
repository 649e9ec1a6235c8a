// The SDK's story, step by step, as a web app would write it. The Go test
// (story_test.go) calls run(step, args) through the DevTools protocol and
// checks what each step reports.

import * as kb from "/sdk/index.js";

function client(a, extra = {}) {
  return new kb.Keybroker({ baseUrl: a.api, token: a.token, credentials: "include", ...extra });
}

/** What a thrown error is, for the Go side. */
export function describe(e) {
  const classes = [
    "BadRequestError", "AuthenticationError", "KeyProofError", "NotFoundError", "ConflictError",
    "RateLimitedError", "UnavailableError", "ServerError", "ApiError", "NetworkError", "ProtocolError",
    "RecoveryCodeFormatError", "WrongRecoveryCodeError", "RecoveryCodeRequiredError", "KeybrokerError",
  ];
  const api = e instanceof kb.ApiError;
  return {
    name: e?.name ?? String(e),
    message: e?.message ?? String(e),
    code: api ? e.code : "",
    status: api ? e.status : 0,
    retryAfterMs: api ? (e.retryAfterMs ?? null) : null,
    requestId: api ? (e.requestId ?? "") : "",
    class: classes.find((c) => e instanceof kb[c]) ?? "",
  };
}

/** Runs fn and reports what it threw (null when it did not). */
async function caught(fn) {
  try {
    await fn();
    return null;
  } catch (e) {
    return describe(e);
  }
}

/** The vault's status as JSON: the Date as its ISO string. */
async function status(c) {
  const st = await c.status();
  return { ...st, recoverySetAt: st.recoverySetAt instanceof Date ? st.recoverySetAt.toISOString() : st.recoverySetAt };
}

/** What the page can learn about a key. */
async function keyFacts(key) {
  let exportError = null;
  try {
    await crypto.subtle.exportKey("raw", key);
  } catch (e) {
    exportError = e.name;
  }
  return {
    type: Object.prototype.toString.call(key),
    extractable: key.extractable,
    algorithm: key.algorithm,
    usages: [...key.usages].sort(),
    exportError,
  };
}

/** The app encrypts a record with the master key: AES-GCM, random IV. */
async function seal(key, text) {
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const ct = await crypto.subtle.encrypt({ name: "AES-GCM", iv }, key, new TextEncoder().encode(text));
  return { iv: kb.toBase64(iv), ct: kb.toBase64(new Uint8Array(ct)) };
}

async function open(key, sealed) {
  const plain = await crypto.subtle.decrypt({ name: "AES-GCM", iv: kb.fromBase64(sealed.iv) }, key, kb.fromBase64(sealed.ct));
  return new TextDecoder().decode(plain);
}

/** Keeps the CryptoKey in IndexedDB and reads it back, as an app would across reloads. */
function idbRoundTrip(key) {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open("keybroker-test", 1);
    req.onupgradeneeded = () => req.result.createObjectStore("keys");
    req.onerror = () => reject(req.error);
    req.onsuccess = () => {
      const db = req.result;
      const tx = db.transaction("keys", "readwrite");
      tx.objectStore("keys").put(key, "master");
      const get = tx.objectStore("keys").get("master");
      tx.oncomplete = () => {
        db.close();
        resolve(get.result);
      };
      tx.onerror = () => reject(tx.error);
    };
  });
}

const steps = {
  /** Device A: first sign-in, then zero-knowledge mode. */
  async deviceA(a) {
    const c = client(a);
    const out = {};
    out.statusBefore = await status(c);
    out.keyBeforeInit = await caught(() => c.getKey());
    const init = await c.init();
    out.init = { requiresRecoveryCode: init.requiresRecoveryCode, kekId: init.kekId, formatVersion: init.formatVersion };
    out.key = await keyFacts(init.masterKey);
    out.sealed = await seal(init.masterKey, a.plaintext);
    const again = await c.getKey();
    out.reopened = await open(again.masterKey, out.sealed);
    const stored = await idbRoundTrip(init.masterKey);
    out.storedKey = await keyFacts(stored);
    out.storedOpens = await open(stored, out.sealed);
    const asked = await c.getKey({ as: "bytes" });
    out.bytesType = Object.prototype.toString.call(asked.masterKey);
    out.bytes = kb.toBase64(asked.masterKey);
    out.enableWithoutCode = await caught(() => c.enableZeroKnowledge());
    out.recoveryCode = await c.setRecoveryCode();
    await c.enableZeroKnowledge();
    out.statusZK = await status(c);
    const locked = await c.getKey();
    out.locked = {
      requiresRecoveryCode: locked.requiresRecoveryCode,
      wrapLength: locked.recoveryWrappedMk.length,
      ivLength: locked.recoveryIv.length,
      hasMasterKey: "masterKey" in locked,
    };
    out.rotateInZK = await caught(() => c.rotate());
    out.clearInZK = await caught(() => c.clearRecoveryWrap());
    out.setWithoutCode = await caught(() => c.setRecoveryCode());
    return out;
  },

  /** Device B: a new device with nothing but the recovery code. */
  async deviceB(a) {
    const c = client(a);
    const out = {};
    out.status = await status(c);
    out.wrongCode = await caught(() => c.unlock(a.wrongCode));
    out.malformed = await caught(() => c.unlock("1234-5678"));
    const key = await c.unlock(a.code);
    out.key = await keyFacts(key);
    out.opened = await open(key, a.sealed);
    out.newCode = await c.setRecoveryCode({ currentCode: a.code });
    out.oldCodeAfter = await caught(() => c.unlock(a.code));
    out.disableWrongCode = await caught(() => c.disableZeroKnowledge(a.code));
    const back = await c.disableZeroKnowledge(out.newCode);
    out.backKey = await keyFacts(back);
    out.backOpens = await open(back, a.sealed);
    out.statusAfterDisable = await status(c);
    const rotated = await c.rotate();
    out.rotated = { requiresRecoveryCode: rotated.requiresRecoveryCode, kekId: rotated.kekId };
    out.rotatedKey = await keyFacts(rotated.masterKey);
    out.oldRecordWithNewKey = await caught(() => open(rotated.masterKey, a.sealed));
    out.sealed2 = await seal(rotated.masterKey, a.plaintext2);
    out.statusAfterRotate = await status(c);
    return out;
  },

  /** Device A again: the rotated key opens what device B wrote. */
  async deviceAAgain(a) {
    const key = await client(a).getKey();
    return { opened: await open(key.masterKey, a.sealed) };
  },

  /** The SDK unlocks a vault a recovery code opens, and sets a new code with the proof. */
  async unlockAndReplace(a) {
    const c = client(a);
    const bytes = await c.unlock(a.code, { as: "bytes" });
    const newCode = await c.setRecoveryCode({ currentCode: a.code });
    return { masterKey: kb.toBase64(bytes), newCode };
  },

  /** Rate limited: the error with its Retry-After, then the SDK waiting it out. */
  async rateLimited(a) {
    const impatient = client(a, { retry: { maxRetries: 0 } });
    const out = { first: await caught(() => status(impatient)), second: await caught(() => status(impatient)) };
    const start = performance.now();
    out.patient = await caught(() => status(client(a)));
    out.waitedMs = performance.now() - start;
    return out;
  },

  /** A dependency of the server is down: 503 with Retry-After. */
  async unavailable(a) {
    return {
      noRetry: await caught(() => client(a, { retry: { maxRetries: 0 } }).getKey()),
      // Retry-After (5 s) is over maxDelayMs: the app decides, at once.
      tooLong: await caught(() => client(a, { retry: { maxDelayMs: 1000 } }).getKey()),
    };
  },

  /**
   * A mission grant: the page asks keybroker for grants to a named worker
   * and to the default one, and encrypts a record for the mission under
   * the mission key it derives itself (WebCrypto HKDF, then AES-GCM with
   * the record id as additional data).
   */
  async missionGrant(a) {
    const c = client(a);
    await c.init();
    const scope = { missionId: a.missionId, tables: a.tables, recordIds: a.recordIds };
    const named = await c.missionGrant({ ...scope, recipient: a.recipient, ttlMs: 3600000 });
    const upstream = await c.missionGrant(scope);
    const missionKey = await c.missionKey(named.derivation);
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const ct = await crypto.subtle.encrypt(
      { name: "AES-GCM", iv, additionalData: new TextEncoder().encode(a.recordId) },
      missionKey,
      new TextEncoder().encode(a.plaintext),
    );
    return {
      named: named.json,
      upstream: upstream.json,
      key: await keyFacts(missionKey),
      sealed: { iv: kb.toBase64(iv), ct: kb.toBase64(new Uint8Array(ct)) },
      unknownRecipient: await caught(() => c.missionGrant({ ...scope, recipient: "nobody" })),
      badScope: await caught(() => c.missionGrant({ ...scope, recordIds: ["journal:1"] })),
    };
  },

  /** A page whose origin keybroker does not list. */
  async foreignOrigin(a) {
    return { refused: await caught(() => status(client(a))) };
  },
};

export async function run(name, args) {
  try {
    return { ok: true, value: await steps[name](args) };
  } catch (e) {
    return { ok: false, error: { ...describe(e), stack: e?.stack ?? "" } };
  }
}
