// The original web client's side of the encryption vault, and nothing
// else: the routes and JSON bodies of mana-auth's vault, the recovery code
// (32 random bytes as 16 dashed groups of hex) and its AES-GCM wrap under
// HKDF-SHA256 (empty salt, info "mana-recovery-v1"), built with WebCrypto
// as the original app built them. No keyProof field, no SDK: this module
// imports nothing. legacy_test.go calls run(step, args).

const BASE = "/api/v1/me/encryption-vault";

async function call(a, method, path, body) {
  const headers = { Authorization: `Bearer ${a.token}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(a.api + BASE + path, init);
  return { status: res.status, body: await res.json() };
}

const b64 = (bytes) => btoa(String.fromCharCode(...bytes));
const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));

function newRecoverySecret() {
  const secret = crypto.getRandomValues(new Uint8Array(32));
  const hex = Array.from(secret, (b) => b.toString(16).padStart(2, "0")).join("").toUpperCase();
  return { secret, code: hex.match(/.{4}/g).join("-") };
}

function secretOf(code) {
  const hex = code.replace(/[-\s]/g, "");
  return Uint8Array.from(hex.match(/.{2}/g), (h) => parseInt(h, 16));
}

async function recoveryKey(secret) {
  const base = await crypto.subtle.importKey("raw", secret, "HKDF", false, ["deriveKey"]);
  return crypto.subtle.deriveKey(
    { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: new TextEncoder().encode("mana-recovery-v1") },
    base,
    { name: "AES-GCM", length: 256 },
    false,
    ["encrypt", "decrypt"],
  );
}

/** The body of POST /recovery-wrap for a master key (base64) under a fresh code. */
async function newRecoveryWrap(masterKeyB64) {
  const { secret, code } = newRecoverySecret();
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const sealed = await crypto.subtle.encrypt({ name: "AES-GCM", iv }, await recoveryKey(secret), unb64(masterKeyB64));
  return { code, body: { recoveryWrappedMk: b64(new Uint8Array(sealed)), recoveryIv: b64(iv) } };
}

/** Opens the zero-knowledge answer of GET /key with a code; the master key in base64. */
async function unlock(keyBody, code) {
  const mk = await crypto.subtle.decrypt(
    { name: "AES-GCM", iv: unb64(keyBody.recoveryIv) },
    await recoveryKey(secretOf(code)),
    unb64(keyBody.recoveryWrappedMk),
  );
  return b64(new Uint8Array(mk));
}

/** Whether the code opens the zero-knowledge answer to the master key mk. */
async function opensWith(keyBody, code, mk) {
  try {
    return (await unlock(keyBody, code)) === mk;
  } catch {
    return false;
  }
}

const steps = {
  /** Every flow of the original client in standard mode, then zero-knowledge. */
  async story(a) {
    const out = {};
    out.status = await call(a, "GET", "/status");
    out.init = await call(a, "POST", "/init");
    out.key = await call(a, "GET", "/key");
    out.rotate = await call(a, "POST", "/rotate");
    const mk = out.rotate.body.masterKey;
    out.keyAfterRotate = await call(a, "GET", "/key");

    const first = await newRecoveryWrap(mk);
    out.setWrap = await call(a, "POST", "/recovery-wrap", first.body);
    out.clearWrap = await call(a, "DELETE", "/recovery-wrap");
    const second = await newRecoveryWrap(mk);
    out.setWrapAgain = await call(a, "POST", "/recovery-wrap", second.body);
    out.statusWithWrap = await call(a, "GET", "/status");
    out.enable = await call(a, "POST", "/zero-knowledge", { enable: true });
    out.locked = await call(a, "GET", "/key");
    out.unlocked = await unlock(out.locked.body, second.code);
    out.rotateInZK = await call(a, "POST", "/rotate");
    out.clearInZK = await call(a, "DELETE", "/recovery-wrap");

    // Changing the recovery code in zero-knowledge mode, the original way.
    const third = await newRecoveryWrap(mk);
    out.replaceInZK = await call(a, "POST", "/recovery-wrap", third.body);
    out.lockedAfterReplace = await call(a, "GET", "/key");
    out.secondCodeStillOpens = await opensWith(out.lockedAfterReplace.body, second.code, mk);
    out.code = second.code;
    out.thirdCode = third.code;
    out.masterKey = mk;
    return out;
  },

  /** The way round for an unchanged client: leave zero-knowledge, set the wrap, enable again. */
  async changeCodeTheLongWay(a) {
    const out = {};
    const locked = await call(a, "GET", "/key");
    const mk = await unlock(locked.body, a.code);
    out.disable = await call(a, "POST", "/zero-knowledge", { enable: false, masterKey: mk });
    const next = await newRecoveryWrap(mk);
    out.setWrap = await call(a, "POST", "/recovery-wrap", next.body);
    out.enable = await call(a, "POST", "/zero-knowledge", { enable: true });
    const relocked = await call(a, "GET", "/key");
    out.newCodeOpens = await opensWith(relocked.body, next.code, mk);
    out.code = next.code;
    return out;
  },

  /** A replacement of the recovery wrap in zero-knowledge mode, as sent. */
  async replace(a) {
    return { replace: await call(a, "POST", "/recovery-wrap", a.body) };
  },

  /** The original client opens the vault with a code (one the SDK may have set). */
  async unlockWith(a) {
    const locked = await call(a, "GET", "/key");
    return { masterKey: await unlock(locked.body, a.code) };
  },

  /** Leaving zero-knowledge mode with the key the code opens. */
  async disable(a) {
    const locked = await call(a, "GET", "/key");
    const mk = await unlock(locked.body, a.code);
    return { disable: await call(a, "POST", "/zero-knowledge", { enable: false, masterKey: mk }), masterKey: mk };
  },
};

export async function run(name, args) {
  try {
    return { ok: true, value: await steps[name](args) };
  } catch (e) {
    return { ok: false, error: { name: e?.name ?? String(e), message: e?.message ?? String(e), stack: e?.stack ?? "" } };
  }
}
