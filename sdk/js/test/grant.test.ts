// Mission grants: the derivation against the upstream's WebCrypto
// vectors, records they encrypted, and the client's grant call against a
// scripted fetch. The real server is the Go tests' (vaultapi, client,
// grant/worker).

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  BadRequestError,
  ConflictError,
  deriveMissionKey,
  ErrorCode,
  Keybroker,
  MISSION_GRANT_PATH,
  missionGrantInfo,
  UnavailableError,
} from "../dist/index.js";
import { b64, grantVectors, recordVectors } from "./vectors.js";

describe("mission key derivation", () => {
  for (const v of grantVectors()) {
    test(`vector ${v.name}`, async () => {
      assert.equal(missionGrantInfo(v.derivation), v.info, "the canonical string, whatever the request's order");
      const key = await deriveMissionKey(b64(v.master_key_base64), v.derivation, { extractable: true });
      const raw = new Uint8Array(await crypto.subtle.exportKey("raw", key));
      assert.equal(Buffer.from(raw).toString("base64"), v.mdk_base64);
      assert.deepEqual(key.algorithm, { name: "AES-GCM", length: 256 });
    });
  }

  test("the key is non-extractable by default and opens the records the browser encrypted", async () => {
    const records = recordVectors();
    const v = grantVectors().find((g) => g.name === records.of)!;
    const key = await deriveMissionKey(b64(v.master_key_base64), v.derivation);
    assert.equal(key.extractable, false);
    for (const r of records.records) {
      const params: AesGcmParams = { name: "AES-GCM", iv: b64(r.iv_base64) };
      if (r.additional_data !== null) {
        params.additionalData = new TextEncoder().encode(r.additional_data);
      }
      const plain = await crypto.subtle.decrypt(params, key, b64(r.ciphertext_base64));
      assert.equal(new TextDecoder().decode(plain), r.plaintext);
    }
  });

  test("a master key of another length or another version is refused", async () => {
    const v = grantVectors()[0]!;
    await assert.rejects(deriveMissionKey(new Uint8Array(31), v.derivation), /32 bytes/);
    await assert.rejects(deriveMissionKey(b64(v.master_key_base64), { ...v.derivation, version: "v2" }), /version v2/);
  });
});

interface Sent {
  url: string;
  body: Record<string, unknown> | undefined;
}

function stub(answers: Response[]): { kb: Keybroker; sent: Sent[] } {
  const sent: Sent[] = [];
  const fetchStub = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    sent.push({ url: String(input), body: typeof init?.body === "string" ? (JSON.parse(init.body) as Record<string, unknown>) : undefined });
    const next = answers.shift();
    assert.ok(next, "an unexpected request");
    return next;
  };
  return { kb: new Keybroker({ baseUrl: "https://example.com/keybroker/", token: "tok", fetch: fetchStub }), sent };
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });
}

const answer = {
  wrappedKey: Buffer.alloc(80, 7).toString("base64"),
  derivation: { version: "v1", missionId: "m", tables: ["notes", "tasks"], recordIds: ["notes:1", "tasks:1"] },
  issuedAt: "2026-05-01T10:00:00.000Z",
  expiresAt: "2026-05-01T12:00:00.000Z",
  recipient: "missions",
  algorithm: "hpke-x25519",
};

describe("missionGrant", () => {
  test("posts the scope below baseUrl, not below the vault's path, and reads the grant", async () => {
    const { kb, sent } = stub([json(200, answer)]);
    const grant = await kb.missionGrant({ missionId: "m", tables: ["tasks", "notes"], recordIds: ["tasks:1", "notes:1"], ttlMs: 7_200_000, recipient: "missions" });
    assert.equal(MISSION_GRANT_PATH, "/api/v1/me/ai-mission-grant");
    assert.equal(sent[0]!.url, "https://example.com/keybroker/api/v1/me/ai-mission-grant");
    assert.deepEqual(sent[0]!.body, { missionId: "m", tables: ["tasks", "notes"], recordIds: ["tasks:1", "notes:1"], ttlMs: 7_200_000, recipient: "missions" });
    assert.equal(grant.wrappedKey.length, 80);
    assert.deepEqual(grant.derivation, answer.derivation);
    assert.deepEqual(grant.expiresAt, new Date("2026-05-01T12:00:00.000Z"));
    assert.equal(grant.recipient, "missions");
    assert.equal(grant.algorithm, "hpke-x25519");
    assert.deepEqual(JSON.parse(grant.json), answer, "the answer, to forward to the worker");
  });

  test("the upstream's request sends only the upstream's fields", async () => {
    const { recipient: _r, algorithm: _a, ...upstream } = answer;
    const { kb, sent } = stub([json(200, upstream)]);
    const grant = await kb.missionGrant({ missionId: "m", tables: ["notes"], recordIds: ["notes:1"] });
    assert.deepEqual(Object.keys(sent[0]!.body!), ["missionId", "tables", "recordIds"]);
    assert.equal(grant.recipient, undefined);
  });

  test("errors have their families, and GRANT_NOT_CONFIGURED is not retried", async () => {
    const { kb, sent } = stub([
      json(503, { error: "not configured", code: ErrorCode.GRANT_NOT_CONFIGURED }, { "Retry-After": "0" }),
      json(400, { error: "no such recipient", code: ErrorCode.GRANT_RECIPIENT_UNKNOWN }),
      json(409, { error: "zk", code: ErrorCode.ZK_ACTIVE }),
      json(200, { ...answer, wrappedKey: "not base64!" }),
    ]);
    const req = { missionId: "m", tables: ["notes"], recordIds: ["notes:1"] };
    await assert.rejects(kb.missionGrant(req), (e: unknown) => e instanceof UnavailableError && e.code === "GRANT_NOT_CONFIGURED");
    assert.equal(sent.length, 1, "an operator's setting is not waited out");
    await assert.rejects(kb.missionGrant(req), BadRequestError);
    await assert.rejects(kb.missionGrant(req), ConflictError);
    await assert.rejects(kb.missionGrant(req), /wrappedKey is not base64/);
  });

  test("missionKey derives from the master key the server hands out", async () => {
    const records = recordVectors();
    const v = grantVectors().find((g) => g.name === records.of)!;
    const { kb, sent } = stub([json(200, { masterKey: v.master_key_base64, formatVersion: 2, kekId: "env-v1" })]);
    const key = await kb.missionKey(v.derivation);
    assert.ok(sent[0]!.url.endsWith("/api/v1/me/encryption-vault/key"));
    const r = records.records[0]!;
    const plain = await crypto.subtle.decrypt({ name: "AES-GCM", iv: b64(r.iv_base64) }, key, b64(r.ciphertext_base64));
    assert.equal(new TextDecoder().decode(plain), r.plaintext);
  });
});
