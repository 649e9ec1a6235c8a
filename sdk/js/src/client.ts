// The vault client: one method per route of keybroker's encryption-vault
// API, plus the flows built from them (recovery code, zero-knowledge
// mode, unlock on a new device). Master keys reach the app as
// non-extractable AES-GCM CryptoKeys unless it asks for bytes.

import { type Bytes, fromBase64, toBase64, wipe } from "./bytes.js";
import {
  ApiError,
  apiErrorFor,
  ErrorCode,
  NetworkError,
  ProtocolError,
  RecoveryCodeRequiredError,
} from "./errors.js";
import {
  deriveMissionKey,
  MISSION_GRANT_PATH,
  type MissionDerivation,
  type MissionGrant,
  type MissionGrantRequest,
} from "./grant.js";
import {
  DEFAULT_KEY_USAGES,
  generateRecoveryCode,
  importMasterKey,
  keyProof,
  MASTER_KEY_SIZE,
  parseRecoveryCode,
  type RecoveryWrap,
  RECOVERY_IV_SIZE,
  RECOVERY_WRAP_SIZE,
  unwrapWithRecovery,
  wrapWithRecovery,
} from "./recovery.js";

/** Where keybroker serves the encryption-vault routes, below baseUrl. */
export const BASE_PATH = "/api/v1/me/encryption-vault";

/** The user's bearer token (the JWT of the auth service), or a function that returns a current one. */
export type TokenSource = string | (() => string | Promise<string>);

/** Options of a Keybroker client. */
export interface KeybrokerOptions {
  /**
   * keybroker's origin, e.g. "https://keys.example.com", or a URL with a
   * path prefix behind a proxy ("https://example.com/keybroker").
   */
  baseUrl: string | URL;
  /** The bearer token, or a function called before every request (for tokens that expire). */
  token: TokenSource;
  /**
   * fetch's credentials mode. Default "same-origin": the token travels in
   * Authorization, no cookie is needed. "include" also sends keybroker's
   * origin's cookies (keybroker allows it for listed origins).
   */
  credentials?: RequestCredentials;
  /**
   * Retries of a request answered 429 or 503 with Retry-After: at most
   * maxRetries more attempts (default 2), each after the server's
   * Retry-After, as long as that is at most maxDelayMs (default 10000).
   * `{ maxRetries: 0 }` turns retrying off.
   */
  retry?: { maxRetries?: number; maxDelayMs?: number };
  /** The fetch to use; default the global fetch. */
  fetch?: typeof fetch;
}

/** Options every call takes. */
export interface CallOptions {
  /** Aborts the request, and a wait before a retry. */
  signal?: AbortSignal | undefined;
}

/** How the app wants the master key: a CryptoKey (the default) or its bytes. */
export type KeyFormat = "cryptokey" | "bytes";

/** The master key in the format F. */
export type MasterKey<F extends KeyFormat> = F extends "bytes" ? Bytes : CryptoKey;

/** Options of the calls that hand out the master key. */
export interface KeyOptions<F extends KeyFormat = "cryptokey"> extends CallOptions {
  /**
   * "cryptokey" (default): a non-extractable AES-256-GCM CryptoKey. Ask
   * for "bytes" only when the key must leave WebCrypto (wipe them after
   * use).
   */
  as?: F | undefined;
  /** Usages of the CryptoKey; default ["encrypt", "decrypt"]. */
  usages?: readonly KeyUsage[] | undefined;
}

/** The vault's metadata (GET /status). */
export interface VaultStatus {
  vaultExists: boolean;
  hasRecoveryWrap: boolean;
  zeroKnowledge: boolean;
  /** When the recovery wrap was set; null without one. */
  recoverySetAt: Date | null;
}

/** The master key of a vault in standard mode. */
export interface UnlockedKey<K> {
  readonly requiresRecoveryCode: false;
  readonly masterKey: K;
  readonly formatVersion: number;
  /** The id of the key-encryption key that wraps the master key on the server. */
  readonly kekId: string;
}

/**
 * A vault in zero-knowledge mode: the server holds only the recovery
 * wrap, which unlock() opens with the user's recovery code.
 */
export interface LockedKey<K> {
  readonly requiresRecoveryCode: true;
  readonly formatVersion: number;
  readonly recoveryWrappedMk: Bytes;
  readonly recoveryIv: Bytes;
  /**
   * Opens the recovery wrap with the code. Throws RecoveryCodeFormatError
   * or WrongRecoveryCodeError.
   */
  unlock(recoveryCode: string): Promise<K>;
}

/** What init(), getKey() and rotate() return. */
export type VaultKey<K> = UnlockedKey<K> | LockedKey<K>;

interface KeyBody {
  masterKey?: unknown;
  formatVersion?: unknown;
  kekId?: unknown;
  requiresRecoveryCode?: unknown;
  recoveryWrappedMk?: unknown;
  recoveryIv?: unknown;
}

interface VaultRequest {
  method: "GET" | "POST" | "DELETE";
  /** Below BASE_PATH, or below baseUrl when root is set. */
  path: string;
  root?: boolean;
  body?: Record<string, unknown>;
  signal?: AbortSignal | undefined;
}

const DEFAULT_MAX_RETRIES = 2;
const DEFAULT_MAX_RETRY_DELAY_MS = 10_000;

/**
 * A client of one keybroker for one user (the token's subject).
 *
 * ```ts
 * const kb = new Keybroker({ baseUrl: "https://keys.example.com", token: () => session.jwt() });
 * const key = await kb.init();                    // standard mode: key.masterKey is a CryptoKey
 * const code = await kb.setRecoveryCode();        // show it to the user, once
 * await kb.enableZeroKnowledge();                 // the server drops its own wrap
 * const mk = await kb.unlock(code);               // on a new device
 * ```
 */
export class Keybroker {
  readonly #base: string;
  readonly #root: string;
  readonly #token: TokenSource;
  readonly #credentials: RequestCredentials;
  readonly #maxRetries: number;
  readonly #maxRetryDelayMs: number;
  readonly #fetch: typeof fetch;

  constructor(options: KeybrokerOptions) {
    const url = new URL(options.baseUrl);
    if (url.protocol !== "https:" && url.protocol !== "http:") {
      throw new TypeError("keybroker: baseUrl must be an http or https URL");
    }
    if (url.username || url.password || url.search || url.hash) {
      throw new TypeError("keybroker: baseUrl must not carry credentials, a query or a fragment");
    }
    if (options.token === undefined || options.token === "") {
      throw new TypeError("keybroker: token is required");
    }
    this.#root = url.href.replace(/\/+$/, "");
    this.#base = this.#root + BASE_PATH;
    this.#token = options.token;
    this.#credentials = options.credentials ?? "same-origin";
    this.#maxRetries = Math.max(0, Math.floor(options.retry?.maxRetries ?? DEFAULT_MAX_RETRIES));
    this.#maxRetryDelayMs = Math.max(0, options.retry?.maxDelayMs ?? DEFAULT_MAX_RETRY_DELAY_MS);
    // A bare reference to window.fetch throws "Illegal invocation" when
    // called as a method of another object: bind it to the global.
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** GET /status: whether the user has a vault, a recovery wrap and zero-knowledge mode. No audit row. */
  async status(options: CallOptions = {}): Promise<VaultStatus> {
    const body = await this.#request({ method: "GET", path: "/status", signal: options.signal });
    const recoverySetAt = body.recoverySetAt;
    if (
      typeof body.vaultExists !== "boolean" ||
      typeof body.hasRecoveryWrap !== "boolean" ||
      typeof body.zeroKnowledge !== "boolean" ||
      (recoverySetAt !== null && typeof recoverySetAt !== "string")
    ) {
      throw new ProtocolError("keybroker: /status: the answer is not the expected JSON");
    }
    let setAt: Date | null = null;
    if (typeof recoverySetAt === "string") {
      setAt = new Date(recoverySetAt);
      if (Number.isNaN(setAt.getTime())) {
        throw new ProtocolError("keybroker: /status: recoverySetAt is not an ISO 8601 time");
      }
    }
    return {
      vaultExists: body.vaultExists,
      hasRecoveryWrap: body.hasRecoveryWrap,
      zeroKnowledge: body.zeroKnowledge,
      recoverySetAt: setAt,
    };
  }

  /**
   * POST /init: the user's master key, creating the vault on the first
   * call; later calls return the same key (or, in zero-knowledge mode, the
   * recovery wrap to unlock).
   */
  init<F extends KeyFormat = "cryptokey">(options: KeyOptions<F> = {}): Promise<VaultKey<MasterKey<F>>> {
    return this.#key("POST", "/init", options);
  }

  /**
   * GET /key: the user's master key, or in zero-knowledge mode the
   * recovery wrap to unlock. Before init() it throws NotFoundError
   * (VAULT_NOT_INITIALISED).
   */
  getKey<F extends KeyFormat = "cryptokey">(options: KeyOptions<F> = {}): Promise<VaultKey<MasterKey<F>>> {
    return this.#key("GET", "/key", options);
  }

  /**
   * POST /rotate: a fresh master key; the old one is gone, so re-encrypt
   * the user's data with the new key first (decrypt with the old, encrypt
   * with the new). It clears the recovery wrap: set a new recovery code
   * afterwards. In zero-knowledge mode it throws ConflictError
   * (ZK_ROTATE_FORBIDDEN): disableZeroKnowledge first.
   */
  async rotate<F extends KeyFormat = "cryptokey">(options: KeyOptions<F> = {}): Promise<UnlockedKey<MasterKey<F>>> {
    const key = await this.#key("POST", "/rotate", options);
    if (key.requiresRecoveryCode) {
      throw new ProtocolError("keybroker: /rotate: the answer has no masterKey");
    }
    return key;
  }

  /**
   * Opens the vault on this device and returns the master key: in
   * zero-knowledge mode with the recovery code (GET /key, then the
   * recovery wrap opened here — the code never leaves the page), in
   * standard mode directly (the code is not needed). Throws
   * RecoveryCodeFormatError or WrongRecoveryCodeError for a bad code.
   */
  async unlock<F extends KeyFormat = "cryptokey">(recoveryCode: string, options: KeyOptions<F> = {}): Promise<MasterKey<F>> {
    checkRecoveryCode(recoveryCode);
    const key = await this.getKey(options);
    return key.requiresRecoveryCode ? key.unlock(recoveryCode) : key.masterKey;
  }

  /**
   * Gives the vault a new recovery code and returns it, for the user to
   * write down; any earlier code stops working. The master key is taken
   * from the server in standard mode; in zero-knowledge mode pass the
   * current code (else RecoveryCodeRequiredError). The wrap is sent with
   * the key's proof (keyProof), which keybroker requires to replace the
   * wrap of a zero-knowledge vault; the code never leaves the page. A key
   * that changed meanwhile (a rotation on another device) makes keybroker
   * refuse the wrap with KeyProofError, and nothing is stored: call again.
   */
  async setRecoveryCode(options: CallOptions & { currentCode?: string | undefined } = {}): Promise<string> {
    const mk = await this.#masterKeyBytes(options.currentCode, options.signal);
    const { secret, code } = generateRecoveryCode();
    try {
      const wrap = await wrapWithRecovery(mk, secret);
      await this.setRecoveryWrap(wrap, { keyProof: await keyProof(mk), signal: options.signal });
      return code;
    } finally {
      wipe(mk, secret);
    }
  }

  /**
   * POST /recovery-wrap with a wrap the app built itself
   * (wrapWithRecovery). Prefer setRecoveryCode. keyProof (see keyProof())
   * is required in zero-knowledge mode; throws KeyProofError without it or
   * with a wrong one, NotFoundError before init().
   */
  async setRecoveryWrap(wrap: RecoveryWrap, options: CallOptions & { keyProof?: Uint8Array | undefined } = {}): Promise<void> {
    const body: Record<string, unknown> = {
      recoveryWrappedMk: toBase64(wrap.recoveryWrappedMk),
      recoveryIv: toBase64(wrap.recoveryIv),
    };
    if (options.keyProof) {
      body.keyProof = toBase64(options.keyProof);
    }
    await this.#request({ method: "POST", path: "/recovery-wrap", body, signal: options.signal });
  }

  /**
   * DELETE /recovery-wrap: forgets the recovery code. Throws ConflictError
   * (ZK_ACTIVE) in zero-knowledge mode, NotFoundError before init().
   */
  async clearRecoveryWrap(options: CallOptions = {}): Promise<void> {
    await this.#request({ method: "DELETE", path: "/recovery-wrap", signal: options.signal });
  }

  /**
   * POST /zero-knowledge {enable: true}: the server drops its own wrap;
   * from now on only the recovery code opens the master key, and the
   * server cannot. Set a recovery code first (else BadRequestError
   * RECOVERY_WRAP_MISSING) and make sure the user has written it down.
   * The request carries the key's proof, which keybroker checks.
   * Idempotent.
   */
  async enableZeroKnowledge(options: CallOptions = {}): Promise<void> {
    const key = await this.getKey({ as: "bytes", signal: options.signal });
    const body: Record<string, unknown> = { enable: true };
    if (!key.requiresRecoveryCode) {
      try {
        body.keyProof = toBase64(await keyProof(key.masterKey));
      } finally {
        wipe(key.masterKey);
      }
    }
    await this.#request({ method: "POST", path: "/zero-knowledge", body, signal: options.signal });
  }

  /**
   * POST /zero-knowledge {enable: false, masterKey}: opens the recovery
   * wrap with the code and hands the master key back to the server, which
   * wraps it with its key-encryption key again (the key is its own proof).
   * Returns the master key. In standard mode it only returns the key.
   * Throws WrongRecoveryCodeError for a code that does not open the wrap;
   * ConflictError (MASTER_KEY_MISMATCH) if the server finds the key is not
   * the vault's (nothing changed).
   */
  async disableZeroKnowledge<F extends KeyFormat = "cryptokey">(
    recoveryCode: string,
    options: KeyOptions<F> = {},
  ): Promise<MasterKey<F>> {
    checkRecoveryCode(recoveryCode);
    const key = await this.getKey({ as: "bytes", signal: options.signal });
    let mk: Bytes;
    if (key.requiresRecoveryCode) {
      mk = await key.unlock(recoveryCode);
      try {
        await this.#request({
          method: "POST",
          path: "/zero-knowledge",
          body: { enable: false, masterKey: toBase64(mk) },
          signal: options.signal,
        });
      } catch (e) {
        wipe(mk);
        throw e;
      }
    } else {
      mk = key.masterKey;
    }
    return this.#handOut(mk, options);
  }

  /**
   * POST /api/v1/me/ai-mission-grant: lets a background worker decrypt the listed records while
   * the user is away. keybroker derives the mission data key from the master key and wraps it to
   * the worker; forward `grant.json` to the worker, and encrypt the mission's records under
   * missionKey(grant.derivation). Throws BadRequestError (BAD_REQUEST: the message names the
   * field; GRANT_RECIPIENT_UNKNOWN), NotFoundError before init(), ConflictError (ZK_ACTIVE) in
   * zero-knowledge mode, UnavailableError (GRANT_NOT_CONFIGURED: the server has no worker key;
   * not retried).
   */
  async missionGrant(request: MissionGrantRequest, options: CallOptions = {}): Promise<MissionGrant> {
    const body: Record<string, unknown> = {
      missionId: request.missionId,
      tables: [...request.tables],
      recordIds: [...request.recordIds],
    };
    if (request.ttlMs !== undefined) {
      body.ttlMs = request.ttlMs;
    }
    if (request.recipient !== undefined) {
      body.recipient = request.recipient;
    }
    const answer = await this.#request({ method: "POST", path: MISSION_GRANT_PATH, root: true, body, signal: options.signal });
    return readGrant(answer);
  }

  /**
   * The mission data key of a grant's scope, derived here from the master key (fetched as bytes
   * and wiped): an AES-256-GCM CryptoKey, non-extractable, to encrypt the mission's records for
   * the worker. In zero-knowledge mode pass the recovery code (else RecoveryCodeRequiredError) —
   * though keybroker issues no grant in that mode.
   */
  async missionKey(
    derivation: Pick<MissionDerivation, "missionId" | "tables" | "recordIds"> & { version?: string },
    options: CallOptions & { currentCode?: string | undefined; usages?: readonly KeyUsage[] | undefined } = {},
  ): Promise<CryptoKey> {
    const mk = await this.#masterKeyBytes(options.currentCode, options.signal);
    try {
      return await deriveMissionKey(mk, derivation, options.usages ? { usages: options.usages } : {});
    } finally {
      wipe(mk);
    }
  }

  async #masterKeyBytes(currentCode: string | undefined, signal: AbortSignal | undefined): Promise<Bytes> {
    if (currentCode !== undefined) {
      checkRecoveryCode(currentCode);
    }
    const key = await this.getKey({ as: "bytes", signal });
    if (!key.requiresRecoveryCode) {
      return key.masterKey;
    }
    if (currentCode === undefined) {
      throw new RecoveryCodeRequiredError();
    }
    return key.unlock(currentCode);
  }

  async #key<F extends KeyFormat>(
    method: "GET" | "POST",
    path: string,
    options: KeyOptions<F>,
  ): Promise<VaultKey<MasterKey<F>>> {
    const body = (await this.#request({ method, path, signal: options.signal })) as KeyBody;
    const formatVersion = body.formatVersion;
    if (typeof formatVersion !== "number") {
      throw new ProtocolError(`keybroker: ${path}: the answer has no formatVersion`);
    }
    if (body.requiresRecoveryCode === true) {
      const wrapped = typeof body.recoveryWrappedMk === "string" ? fromBase64(body.recoveryWrappedMk) : null;
      const iv = typeof body.recoveryIv === "string" ? fromBase64(body.recoveryIv) : null;
      if (wrapped?.length !== RECOVERY_WRAP_SIZE || iv?.length !== RECOVERY_IV_SIZE) {
        throw new ProtocolError(`keybroker: ${path}: the recovery wrap in the answer is not 48 bytes with a 12-byte IV`);
      }
      const handOut = (mk: Bytes) => this.#handOut(mk, options);
      return {
        requiresRecoveryCode: true,
        formatVersion,
        recoveryWrappedMk: wrapped,
        recoveryIv: iv,
        async unlock(recoveryCode: string): Promise<MasterKey<F>> {
          const secret = parseRecoveryCode(recoveryCode);
          let mk: Bytes;
          try {
            mk = await unwrapWithRecovery({ recoveryWrappedMk: wrapped, recoveryIv: iv }, secret);
          } finally {
            wipe(secret);
          }
          return handOut(mk);
        },
      };
    }
    const mk = typeof body.masterKey === "string" ? fromBase64(body.masterKey) : null;
    if (mk === null || typeof body.kekId !== "string") {
      throw new ProtocolError(`keybroker: ${path}: the answer has neither a masterKey nor requiresRecoveryCode`);
    }
    if (mk.length !== MASTER_KEY_SIZE) {
      const n = mk.length;
      wipe(mk);
      throw new ProtocolError(`keybroker: ${path}: masterKey is ${n} bytes, want ${MASTER_KEY_SIZE}`);
    }
    return {
      requiresRecoveryCode: false,
      masterKey: await this.#handOut(mk, options),
      formatVersion,
      kekId: body.kekId,
    };
  }

  /** The master key as the app asked for it; bytes not handed out are wiped. */
  async #handOut<F extends KeyFormat>(mk: Bytes, options: KeyOptions<F>): Promise<MasterKey<F>> {
    if (options.as === "bytes") {
      return mk as MasterKey<F>;
    }
    try {
      return (await importMasterKey(mk, options.usages ?? DEFAULT_KEY_USAGES)) as MasterKey<F>;
    } finally {
      wipe(mk);
    }
  }

  async #request(req: VaultRequest): Promise<Record<string, unknown>> {
    for (let attempt = 0; ; attempt++) {
      const res = await this.#send(req);
      if (res.ok) {
        let body: unknown;
        try {
          body = await res.json();
        } catch {
          // Not the parser's message: it may quote the answer, a key with it.
          throw new ProtocolError(`keybroker: ${req.method} ${req.path}: the answer is not JSON`);
        }
        if (typeof body !== "object" || body === null || Array.isArray(body)) {
          throw new ProtocolError(`keybroker: ${req.method} ${req.path}: the answer is not a JSON object`);
        }
        return body as Record<string, unknown>;
      }
      const err = await errorOf(res);
      if (
        (res.status === 429 || res.status === 503) &&
        err.code !== ErrorCode.GRANT_NOT_CONFIGURED && // a setting, not an outage
        attempt < this.#maxRetries &&
        err.retryAfterMs !== undefined &&
        err.retryAfterMs <= this.#maxRetryDelayMs
      ) {
        await sleep(err.retryAfterMs, req.signal);
        continue;
      }
      throw err;
    }
  }

  async #send(req: VaultRequest): Promise<Response> {
    const token = typeof this.#token === "function" ? await this.#token() : this.#token;
    const headers: Record<string, string> = {
      Authorization: `Bearer ${token}`,
      Accept: "application/json",
    };
    const init: RequestInit = {
      method: req.method,
      headers,
      credentials: this.#credentials,
      // Answers carry key material: never from or into the HTTP cache.
      cache: "no-store",
      // The Referer would tell keybroker's logs the app's URL; it needs no such thing.
      referrerPolicy: "no-referrer",
    };
    if (req.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(req.body);
    }
    if (req.signal) {
      init.signal = req.signal;
    }
    try {
      return await this.#fetch((req.root ? this.#root : this.#base) + req.path, init);
    } catch (e) {
      if (req.signal?.aborted) {
        throw req.signal.reason ?? e;
      }
      throw new NetworkError(
        `keybroker: ${req.method} ${req.path}: no answer (offline, or the browser refused CORS: is this page's origin in KEYBROKER_CORS_ORIGINS?)`,
        { cause: e },
      );
    }
  }
}

/** Reads a mission grant answer, strictly. */
function readGrant(answer: Record<string, unknown>): MissionGrant {
  const bad = (what: string) => new ProtocolError(`keybroker: ${MISSION_GRANT_PATH}: ${what}`);
  const wrappedKey = typeof answer.wrappedKey === "string" ? fromBase64(answer.wrappedKey) : null;
  if (wrappedKey === null || wrappedKey.length === 0) {
    throw bad("wrappedKey is not base64");
  }
  const d = answer.derivation as Record<string, unknown> | null | undefined;
  const strings = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === "string");
  if (
    typeof d !== "object" ||
    d === null ||
    typeof d.version !== "string" ||
    typeof d.missionId !== "string" ||
    !strings(d.tables) ||
    !strings(d.recordIds)
  ) {
    throw bad("the answer has no derivation");
  }
  const issuedAt = new Date(typeof answer.issuedAt === "string" ? answer.issuedAt : NaN);
  const expiresAt = new Date(typeof answer.expiresAt === "string" ? answer.expiresAt : NaN);
  if (Number.isNaN(issuedAt.getTime()) || Number.isNaN(expiresAt.getTime())) {
    throw bad("issuedAt or expiresAt is not an ISO 8601 time");
  }
  const grant: MissionGrant = {
    wrappedKey,
    derivation: { version: d.version, missionId: d.missionId, tables: d.tables, recordIds: d.recordIds },
    issuedAt,
    expiresAt,
    json: JSON.stringify(answer),
  };
  if (typeof answer.recipient === "string" && typeof answer.algorithm === "string") {
    grant.recipient = answer.recipient;
    grant.algorithm = answer.algorithm;
  }
  return grant;
}

/**
 * Throws RecoveryCodeFormatError for a code that cannot be one, before any
 * request: a typo costs no round trip and no audit row.
 */
function checkRecoveryCode(code: string): void {
  wipe(parseRecoveryCode(code));
}

async function errorOf(res: Response): Promise<ApiError> {
  let code = "";
  let message = res.statusText || `HTTP ${res.status}`;
  try {
    const body: unknown = await res.json();
    if (typeof body === "object" && body !== null) {
      const b = body as { code?: unknown; error?: unknown };
      if (typeof b.code === "string" && b.code !== "") {
        code = b.code;
        if (typeof b.error === "string") {
          message = b.error;
        }
      }
    }
  } catch {
    // A proxy's error page: no code, the status text.
  }
  return apiErrorFor({
    status: res.status,
    code,
    message,
    retryAfterMs: parseRetryAfter(res.headers.get("Retry-After")),
    requestId: res.headers.get("X-Request-Id") ?? undefined,
  });
}

/** Retry-After in milliseconds: delay-seconds or an HTTP date; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | undefined {
  if (value === null) {
    return undefined;
  }
  const s = value.trim();
  if (/^\d+$/.test(s)) {
    return Number(s) * 1000;
  }
  // An HTTP date starts with the day's name ("Wed, 21 Oct 2015 07:28:00 GMT").
  const at = /^[A-Za-z]{3}/.test(s) ? Date.parse(s) : NaN;
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
