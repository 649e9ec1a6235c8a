// The client against a scripted fetch: what it sends, how it reads each
// answer, its errors and its retries. The real server, in a real browser,
// is the Go test in internal/browsertest.

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { describe, test } from "node:test";

import {
  ApiError,
  AuthenticationError,
  BadRequestError,
  ConflictError,
  ErrorCode,
  Keybroker,
  type KeybrokerOptions,
  KeyProofError,
  NetworkError,
  NotFoundError,
  parseRecoveryCode,
  parseRetryAfter,
  ProtocolError,
  RateLimitedError,
  RecoveryCodeFormatError,
  RecoveryCodeRequiredError,
  ServerError,
  UnavailableError,
  unwrapWithRecovery,
  WrongRecoveryCodeError,
} from "../dist/index.js";
import { b64, recoveryVectors } from "./vectors.js";

interface Sent {
  url: string;
  method: string;
  headers: Record<string, string>;
  body: Record<string, unknown> | undefined;
  credentials: RequestCredentials | undefined;
  cache: RequestCache | undefined;
}

type Handler = (req: Sent) => Response | Promise<Response>;

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });
}

function errorBody(status: number, code: string, headers: Record<string, string> = {}): Response {
  return json(status, { error: `text of ${code}`, code }, headers);
}

/** A client whose fetch records each request and answers with handler. */
function scripted(handler: Handler, options: Partial<KeybrokerOptions> = {}): { kb: Keybroker; sent: Sent[] } {
  const sent: Sent[] = [];
  const fetchStub = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const headers = Object.fromEntries(Object.entries((init?.headers ?? {}) as Record<string, string>));
    const req: Sent = {
      url: String(input),
      method: init?.method ?? "GET",
      headers,
      body: typeof init?.body === "string" ? (JSON.parse(init.body) as Record<string, unknown>) : undefined,
      credentials: init?.credentials,
      cache: init?.cache,
    };
    sent.push(req);
    return handler(req);
  };
  const kb = new Keybroker({ baseUrl: "https://keys.example.com", token: "tok", fetch: fetchStub, ...options });
  return { kb, sent };
}

const vector = recoveryVectors()[0]!;
const mkB64 = vector.master_key_base64;

describe("requests", () => {
  test("every call sends the bearer token and JSON only with a body", async () => {
    let n = 0;
    const { kb, sent } = scripted(
      (req) => {
        if (req.url.endsWith("/status")) {
          return json(200, { vaultExists: true, hasRecoveryWrap: true, zeroKnowledge: false, recoverySetAt: "2026-01-02T03:04:05.678Z" });
        }
        return json(200, { ok: true });
      },
      { baseUrl: "https://example.com/keybroker/", token: () => `tok-${++n}` },
    );
    const st = await kb.status();
    assert.deepEqual(st, { vaultExists: true, hasRecoveryWrap: true, zeroKnowledge: false, recoverySetAt: new Date("2026-01-02T03:04:05.678Z") });
    await kb.clearRecoveryWrap();
    await kb.setRecoveryWrap({ recoveryWrappedMk: new Uint8Array(48).fill(1), recoveryIv: new Uint8Array(12).fill(2) });
    assert.deepEqual(
      sent.map((r) => `${r.method} ${r.url}`),
      [
        "GET https://example.com/keybroker/api/v1/me/encryption-vault/status",
        "DELETE https://example.com/keybroker/api/v1/me/encryption-vault/recovery-wrap",
        "POST https://example.com/keybroker/api/v1/me/encryption-vault/recovery-wrap",
      ],
    );
    assert.deepEqual(sent.map((r) => r.headers.Authorization), ["Bearer tok-1", "Bearer tok-2", "Bearer tok-3"]);
    assert.equal(sent[0]!.headers["Content-Type"], undefined, "no body, no Content-Type");
    assert.equal(sent[2]!.headers["Content-Type"], "application/json");
    assert.deepEqual(sent[2]!.body, { recoveryWrappedMk: Buffer.alloc(48, 1).toString("base64"), recoveryIv: Buffer.alloc(12, 2).toString("base64") });
    for (const r of sent) {
      assert.equal(r.credentials, "same-origin");
      assert.equal(r.cache, "no-store");
    }
  });

  test("credentials: include is passed to fetch", async () => {
    const { kb, sent } = scripted(() => json(200, { vaultExists: false, hasRecoveryWrap: false, zeroKnowledge: false, recoverySetAt: null }), {
      credentials: "include",
    });
    assert.equal((await kb.status()).recoverySetAt, null);
    assert.equal(sent[0]!.credentials, "include");
  });

  test("a bad baseUrl or no token is refused at construction", () => {
    assert.throws(() => new Keybroker({ baseUrl: "ftp://x", token: "t" }), /http or https/);
    assert.throws(() => new Keybroker({ baseUrl: "https://x/?a=1", token: "t" }), /query/);
    assert.throws(() => new Keybroker({ baseUrl: "https://x", token: "" }), /token is required/);
  });
});

describe("keys", () => {
  test("the master key is a non-extractable AES-GCM CryptoKey unless bytes are asked for", async () => {
    const { kb } = scripted(() => json(200, { masterKey: mkB64, formatVersion: 2, kekId: "env-v1" }));
    const key = await kb.init();
    assert.equal(key.requiresRecoveryCode, false);
    if (key.requiresRecoveryCode) return;
    assert.equal(key.kekId, "env-v1");
    assert.equal(key.formatVersion, 2);
    assert.equal(key.masterKey.extractable, false);
    assert.deepEqual(key.masterKey.algorithm, { name: "AES-GCM", length: 256 });
    await assert.rejects(crypto.subtle.exportKey("raw", key.masterKey));

    const bytes = await kb.getKey({ as: "bytes" });
    assert.ok(!bytes.requiresRecoveryCode);
    assert.deepEqual(bytes.masterKey, b64(mkB64));

    const wrapping = await kb.rotate({ usages: ["wrapKey", "unwrapKey"] });
    assert.deepEqual([...wrapping.masterKey.usages].sort(), ["unwrapKey", "wrapKey"]);
  });

  test("zero-knowledge: the recovery wrap unlocks with the code, here, to the original's key", async () => {
    const locked = { requiresRecoveryCode: true, recoveryWrappedMk: vector.recoveryWrappedMk, recoveryIv: vector.recoveryIv, formatVersion: 2 };
    const { kb, sent } = scripted(() => json(200, locked));
    const key = await kb.getKey({ as: "bytes" });
    assert.ok(key.requiresRecoveryCode);
    assert.deepEqual(await key.unlock(vector.recovery_code), b64(mkB64));
    await assert.rejects(key.unlock(recoveryVectors()[1]!.recovery_code), WrongRecoveryCodeError);
    await assert.rejects(key.unlock("1234"), RecoveryCodeFormatError);
    const ck = await kb.unlock(vector.recovery_code.toLowerCase());
    assert.equal(ck.extractable, false);
    assert.ok(sent.every((r) => r.body === undefined), "the recovery code never leaves");
    assert.ok(sent.every((r) => !r.url.includes(vector.recovery_code)));
  });

  test("a malformed recovery code costs no request", async () => {
    const { kb, sent } = scripted(() => json(500, {}));
    await assert.rejects(kb.unlock("1234-5678"), RecoveryCodeFormatError);
    await assert.rejects(kb.disableZeroKnowledge("not a code"), RecoveryCodeFormatError);
    await assert.rejects(kb.setRecoveryCode({ currentCode: vector.recovery_code.slice(1) }), RecoveryCodeFormatError);
    assert.equal(sent.length, 0);
  });

  test("answers that are not keybroker's are ProtocolErrors", async () => {
    const answers = [
      new Response("<html>proxy</html>", { status: 200 }),
      json(200, [1, 2]),
      json(200, { masterKey: Buffer.alloc(31).toString("base64"), formatVersion: 2, kekId: "x" }),
      json(200, { masterKey: "not base64!", formatVersion: 2, kekId: "x" }),
      json(200, { formatVersion: 2 }),
      json(200, { requiresRecoveryCode: true, recoveryWrappedMk: "AAAA", recoveryIv: vector.recoveryIv, formatVersion: 2 }),
    ];
    for (const answer of answers) {
      const { kb } = scripted(() => answer);
      await assert.rejects(kb.getKey(), ProtocolError);
    }
  });
});

/** A keybroker in memory, enough for the flows: the proof rules of the README. */
function memoryServer() {
  const state = { mk: b64(mkB64), zk: false, wrap: null as null | { w: string; iv: string } };
  const proof = () => createHmac("sha256", state.mk).update("keybroker key possession proof v1").digest("base64");
  const handler: Handler = (req) => {
    const path = new URL(req.url).pathname.replace("/api/v1/me/encryption-vault", "");
    const body = req.body ?? {};
    switch (`${req.method} ${path}`) {
      case "GET /key":
        return state.zk
          ? json(200, { requiresRecoveryCode: true, recoveryWrappedMk: state.wrap!.w, recoveryIv: state.wrap!.iv, formatVersion: 2 })
          : json(200, { masterKey: Buffer.from(state.mk).toString("base64"), formatVersion: 2, kekId: "env-v1" });
      case "POST /recovery-wrap":
        if (state.zk && body.keyProof === undefined) return errorBody(403, "KEY_PROOF_REQUIRED");
        if (body.keyProof !== undefined && body.keyProof !== proof()) return errorBody(403, "KEY_PROOF_MISMATCH");
        state.wrap = { w: body.recoveryWrappedMk as string, iv: body.recoveryIv as string };
        return json(200, { ok: true });
      case "POST /zero-knowledge":
        if (body.enable === true) {
          if (!state.wrap) return errorBody(400, "RECOVERY_WRAP_MISSING");
          if (body.keyProof !== undefined && body.keyProof !== proof()) return errorBody(403, "KEY_PROOF_MISMATCH");
          state.zk = true;
          return json(200, { ok: true, zeroKnowledge: true });
        }
        if (body.masterKey !== Buffer.from(state.mk).toString("base64")) return errorBody(409, "MASTER_KEY_MISMATCH");
        state.zk = false;
        return json(200, { ok: true, zeroKnowledge: false });
      default:
        return errorBody(404, "NOT_FOUND");
    }
  };
  return { state, handler, proof };
}

describe("flows", () => {
  test("recovery code, zero-knowledge on, a new code with the proof, zero-knowledge off", async () => {
    const server = memoryServer();
    const { kb, sent } = scripted(server.handler);
    await assert.rejects(kb.enableZeroKnowledge(), (e) => e instanceof BadRequestError && e.code === "RECOVERY_WRAP_MISSING");

    const code = await kb.setRecoveryCode();
    assert.match(code, /^[0-9A-F]{4}(-[0-9A-F]{4}){15}$/);
    const set = sent.at(-1)!;
    assert.equal(set.body!.keyProof, server.proof(), "the wrap is sent with the key's proof");
    assert.ok(!JSON.stringify(set.body).includes(mkB64), "never the key itself");
    const opened = await unwrapWithRecovery(
      { recoveryWrappedMk: b64(server.state.wrap!.w), recoveryIv: b64(server.state.wrap!.iv) },
      parseRecoveryCode(code),
    );
    assert.deepEqual(opened, server.state.mk);

    await kb.enableZeroKnowledge();
    assert.equal(sent.at(-1)!.body!.keyProof, server.proof());
    assert.ok(server.state.zk);

    await assert.rejects(kb.setRecoveryCode(), RecoveryCodeRequiredError);
    await assert.rejects(kb.setRecoveryCode({ currentCode: recoveryVectors()[1]!.recovery_code }), WrongRecoveryCodeError);
    const code2 = await kb.setRecoveryCode({ currentCode: code });
    assert.notEqual(code2, code);
    assert.equal(sent.at(-1)!.body!.keyProof, server.proof());

    await assert.rejects(kb.disableZeroKnowledge(code), WrongRecoveryCodeError);
    assert.ok(server.state.zk, "a wrong code changes nothing");
    const mk = await kb.disableZeroKnowledge(code2, { as: "bytes" });
    assert.deepEqual(mk, server.state.mk);
    assert.equal(server.state.zk, false);
    assert.deepEqual(sent.at(-1)!.body, { enable: false, masterKey: mkB64 });
  });
});

describe("a race", () => {
  test("a key rotated between the fetch and the wrap: refused, nothing stored", async () => {
    const server = memoryServer();
    const { kb } = scripted((req) => {
      const res = server.handler(req);
      if (req.method === "GET") {
        server.state.mk = new Uint8Array(32).fill(7); // another device rotates now
      }
      return res;
    });
    await assert.rejects(kb.setRecoveryCode(), (e: unknown) => e instanceof KeyProofError && e.code === "KEY_PROOF_MISMATCH");
    assert.equal(server.state.wrap, null);
  });
});

describe("errors", () => {
  const families: Record<string, [number, new (...args: never[]) => ApiError]> = {
    VAULT_NOT_INITIALISED: [404, NotFoundError],
    NOT_FOUND: [404, NotFoundError],
    NO_RESTORABLE_RECOVERY_WRAP: [404, NotFoundError],
    ZK_ROTATE_FORBIDDEN: [409, ConflictError],
    ZK_ACTIVE: [409, ConflictError],
    MASTER_KEY_MISMATCH: [409, ConflictError],
    RECOVERY_WRAP_MISSING: [400, BadRequestError],
    BAD_REQUEST: [400, BadRequestError],
    PAYLOAD_TOO_LARGE: [413, BadRequestError],
    METHOD_NOT_ALLOWED: [405, BadRequestError],
    UNAUTHORIZED: [401, AuthenticationError],
    USER_UNKNOWN: [403, AuthenticationError],
    KEY_PROOF_REQUIRED: [403, KeyProofError],
    KEY_PROOF_MISMATCH: [403, KeyProofError],
    RATE_LIMITED: [429, RateLimitedError],
    KEK_UNAVAILABLE: [503, UnavailableError],
    STORE_UNAVAILABLE: [503, UnavailableError],
    GRANT_NOT_CONFIGURED: [503, UnavailableError],
    GRANT_RECIPIENT_UNKNOWN: [400, BadRequestError],
    INTERNAL: [500, ServerError],
  };

  test("every code has its family, and the test knows every code", async () => {
    assert.deepEqual(Object.keys(families).sort(), Object.values(ErrorCode).sort());
    for (const [code, [status, Family]] of Object.entries(families)) {
      const { kb } = scripted(() => errorBody(status, code, { "X-Request-Id": "req-1" }), { retry: { maxRetries: 0 } });
      await assert.rejects(kb.getKey(), (e: unknown) => {
        assert.ok(e instanceof Family, `${code}: ${String(e)}`);
        assert.ok(e instanceof ApiError);
        assert.equal(e.code, code);
        assert.equal(e.status, status);
        assert.equal(e.requestId, "req-1");
        assert.match(e.message, new RegExp(`${status} ${code}: text of ${code}`));
        return true;
      });
    }
  });

  test("an unknown code or a proxy's page falls back on the status", async () => {
    const cases: [Response, new (...args: never[]) => ApiError, string][] = [
      [errorBody(409, "SOMETHING_NEW"), ConflictError, "SOMETHING_NEW"],
      [new Response("<html>Bad Gateway</html>", { status: 502, statusText: "Bad Gateway" }), ServerError, ""],
      [new Response("", { status: 503 }), UnavailableError, ""],
      [errorBody(418, "TEAPOT"), ApiError, "TEAPOT"],
    ];
    for (const [answer, Family, code] of cases) {
      const { kb } = scripted(() => answer.clone(), { retry: { maxRetries: 0 } });
      await assert.rejects(kb.status(), (e: unknown) => e instanceof Family && (e as ApiError).code === code);
    }
  });

  for (const [status, code, Family] of [
    [429, "RATE_LIMITED", RateLimitedError],
    [503, "KEK_UNAVAILABLE", UnavailableError],
    [503, "STORE_UNAVAILABLE", UnavailableError],
  ] as const) {
    test(`${status} ${code}: retried after Retry-After, then given up`, async () => {
      let calls = 0;
      const { kb, sent } = scripted(() => (++calls <= 2 ? errorBody(status, code, { "Retry-After": "0" }) : json(200, { masterKey: mkB64, formatVersion: 2, kekId: "k" })));
      const key = await kb.getKey();
      assert.equal(key.requiresRecoveryCode, false);
      assert.equal(sent.length, 3, "two refusals, then the answer");

      const always = scripted(() => errorBody(status, code, { "Retry-After": "0" }), { retry: { maxRetries: 1 } });
      await assert.rejects(always.kb.getKey(), (e: unknown) => e instanceof Family && e.retryAfterMs === 0);
      assert.equal(always.sent.length, 2);

      const long = scripted(() => errorBody(status, code, { "Retry-After": "120" }));
      await assert.rejects(long.kb.getKey(), (e: unknown) => e instanceof Family && e.retryAfterMs === 120_000);
      assert.equal(long.sent.length, 1, "a wait longer than maxDelayMs is the app's to decide");

      const none = scripted(() => errorBody(status, code));
      await assert.rejects(none.kb.getKey(), (e: unknown) => e instanceof Family && e.retryAfterMs === undefined);
      assert.equal(none.sent.length, 1);
    });
  }

  test("Retry-After is waited for", async () => {
    let calls = 0;
    const { kb } = scripted(() => (++calls === 1 ? errorBody(429, "RATE_LIMITED", { "Retry-After": "1" }) : json(200, { ok: true })));
    const start = performance.now();
    await kb.clearRecoveryWrap();
    assert.ok(performance.now() - start >= 990, "the retry came before Retry-After");
  });

  test("an abort ends the wait before a retry", async () => {
    const { kb, sent } = scripted(() => errorBody(503, "STORE_UNAVAILABLE", { "Retry-After": "5" }));
    const ac = new AbortController();
    const pending = kb.getKey({ signal: ac.signal });
    // Abort once the refusal is in: the client is then waiting.
    while (sent.length === 0) await new Promise((r) => setImmediate(r));
    ac.abort(new Error("user left"));
    await assert.rejects(pending, /user left/);
    assert.equal(sent.length, 1);
  });

  test("parseRetryAfter reads seconds and HTTP dates", () => {
    assert.equal(parseRetryAfter(null), undefined);
    assert.equal(parseRetryAfter("5"), 5000);
    assert.equal(parseRetryAfter(" 0 "), 0);
    assert.equal(parseRetryAfter("Wed, 21 Oct 2015 07:28:10 GMT", Date.parse("Wed, 21 Oct 2015 07:28:00 GMT")), 10_000);
    assert.equal(parseRetryAfter("Wed, 21 Oct 2015 07:28:10 GMT", Date.parse("Wed, 21 Oct 2015 08:00:00 GMT")), 0);
    assert.equal(parseRetryAfter("soon"), undefined);
    assert.equal(parseRetryAfter("-1"), undefined);
  });

  test("no answer is a NetworkError naming CORS; an abort stays an abort", async () => {
    const failing = new Keybroker({ baseUrl: "https://keys.example.com", token: "t", fetch: () => Promise.reject(new TypeError("Failed to fetch")) });
    await assert.rejects(failing.status(), (e: unknown) => e instanceof NetworkError && /KEYBROKER_CORS_ORIGINS/.test(e.message) && e.cause instanceof TypeError);
    const ac = new AbortController();
    ac.abort();
    const aborting = new Keybroker({ baseUrl: "https://keys.example.com", token: "t", fetch: (_i, init) => Promise.reject(init?.signal?.reason) });
    await assert.rejects(aborting.status({ signal: ac.signal }), (e: unknown) => e instanceof DOMException && e.name === "AbortError");
  });
});
