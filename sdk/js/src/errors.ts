// Errors of the SDK. A server answer that is not 2xx becomes an ApiError
// of the family of its code, so that an app can write
// `catch (e) { if (e instanceof ConflictError) ... }` and still read the
// exact code in e.code.

/**
 * The machine codes of keybroker's error bodies ({"error", "code"}). The
 * first block is the original service's vocabulary, the rest keybroker's.
 */
export const ErrorCode = {
  /** 404: the user has no vault yet; call init(). */
  VAULT_NOT_INITIALISED: "VAULT_NOT_INITIALISED",
  /** 409: rotate() in zero-knowledge mode. Leave it first (disableZeroKnowledge). */
  ZK_ROTATE_FORBIDDEN: "ZK_ROTATE_FORBIDDEN",
  /** 409: clearing the recovery wrap in zero-knowledge mode, where it is the only wrap. */
  ZK_ACTIVE: "ZK_ACTIVE",
  /** 400: enabling zero-knowledge mode before a recovery code was set. */
  RECOVERY_WRAP_MISSING: "RECOVERY_WRAP_MISSING",
  /** 400: malformed JSON, bad base64 or a wrong length. */
  BAD_REQUEST: "BAD_REQUEST",

  /** 401: the bearer token is missing, expired or not for this keybroker. */
  UNAUTHORIZED: "UNAUTHORIZED",
  /** 409: the key sent to leave zero-knowledge mode is not the vault's master key. */
  MASTER_KEY_MISMATCH: "MASTER_KEY_MISMATCH",
  /** 403: the token is valid but its account no longer exists. */
  USER_UNKNOWN: "USER_UNKNOWN",
  /** 413: the request body is over the server's limit. */
  PAYLOAD_TOO_LARGE: "PAYLOAD_TOO_LARGE",
  /** 503: the key-encryption key cannot be reached; retry after retryAfterMs. */
  KEK_UNAVAILABLE: "KEK_UNAVAILABLE",
  /** 503: the database cannot be reached; retry after retryAfterMs. */
  STORE_UNAVAILABLE: "STORE_UNAVAILABLE",
  /** 429: the user's request budget is spent; retry after retryAfterMs. */
  RATE_LIMITED: "RATE_LIMITED",
  /** 404: no such route (a wrong baseUrl, usually). */
  NOT_FOUND: "NOT_FOUND",
  /** 405: the route exists, the method does not. */
  METHOD_NOT_ALLOWED: "METHOD_NOT_ALLOWED",
  /** 500: the server failed; the detail is in its log only. */
  INTERNAL: "INTERNAL",
  /** 403: replacing the recovery wrap of a zero-knowledge vault without the key's proof. */
  KEY_PROOF_REQUIRED: "KEY_PROOF_REQUIRED",
  /** 403: the proof sent is not the proof of the vault's master key. */
  KEY_PROOF_MISMATCH: "KEY_PROOF_MISMATCH",
  /** 404 (service routes): no recovery wrap is kept for the operator to restore. */
  NO_RESTORABLE_RECOVERY_WRAP: "NO_RESTORABLE_RECOVERY_WRAP",
  /** 503: missionGrant() naming no recipient, on a server without the default worker's key. Not retried. */
  GRANT_NOT_CONFIGURED: "GRANT_NOT_CONFIGURED",
  /** 400: missionGrant() named a recipient the server does not have. */
  GRANT_RECIPIENT_UNKNOWN: "GRANT_RECIPIENT_UNKNOWN",
} as const;

/** One of keybroker's error codes (ErrorCode), or a code this SDK does not know yet. */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Base class of every error this SDK throws. */
export class KeybrokerError extends Error {
  override name = "KeybrokerError";
}

/** What the server said, for ApiError's constructor. */
export interface ApiErrorInit {
  /** The HTTP status. */
  status: number;
  /** The body's code; "" when the answer was not keybroker's error body (a proxy's page). */
  code: string;
  /** The body's human text, or the status text. */
  message: string;
  /** Retry-After in milliseconds, when the server sent one. */
  retryAfterMs?: number | undefined;
  /** X-Request-Id of the answer: the id of the server's access log line. */
  requestId?: string | undefined;
}

/**
 * A non-2xx answer of keybroker. Subclasses name the family of the code;
 * e.code is the exact code (see ErrorCode).
 */
export class ApiError extends KeybrokerError {
  override name = "ApiError";
  /** The HTTP status. */
  readonly status: number;
  /** The machine code of the body; "" for an answer that was not keybroker's. */
  readonly code: string;
  /** The server's Retry-After in milliseconds (429 and 503), else undefined. */
  readonly retryAfterMs: number | undefined;
  /** X-Request-Id of the answer, to find the server's log line. */
  readonly requestId: string | undefined;

  constructor(init: ApiErrorInit) {
    super(init.code ? `keybroker: ${init.status} ${init.code}: ${init.message}` : `keybroker: HTTP ${init.status}: ${init.message}`);
    this.status = init.status;
    this.code = init.code;
    this.retryAfterMs = init.retryAfterMs;
    this.requestId = init.requestId;
  }
}

/**
 * 400, 405, 413: the request was malformed (BAD_REQUEST, PAYLOAD_TOO_LARGE,
 * METHOD_NOT_ALLOWED) or came too early (RECOVERY_WRAP_MISSING: set a
 * recovery code before enabling zero-knowledge mode). Retrying the same
 * request cannot help.
 */
export class BadRequestError extends ApiError {
  override name = "BadRequestError";
}

/**
 * 401 UNAUTHORIZED (get a fresh token and try again) and 403 USER_UNKNOWN
 * (the account is gone: signing in again cannot help).
 */
export class AuthenticationError extends ApiError {
  override name = "AuthenticationError";
}

/**
 * 403 KEY_PROOF_REQUIRED / KEY_PROOF_MISMATCH: the recovery wrap of a
 * zero-knowledge vault was to be replaced by a caller who could not show
 * that it holds the master key. The SDK always sends the proof, so from
 * the SDK this means the key it was given is not the vault's.
 */
export class KeyProofError extends ApiError {
  override name = "KeyProofError";
}

/**
 * 404: VAULT_NOT_INITIALISED (call init()), NOT_FOUND (a wrong baseUrl)
 * or NO_RESTORABLE_RECOVERY_WRAP.
 */
export class NotFoundError extends ApiError {
  override name = "NotFoundError";
}

/**
 * 409: the request does not fit the vault's mode. ZK_ROTATE_FORBIDDEN:
 * leave zero-knowledge mode (disableZeroKnowledge) before rotate().
 * ZK_ACTIVE: the recovery wrap is the only wrap in zero-knowledge mode and
 * cannot be cleared, and the server holds no key to derive a mission key
 * from. MASTER_KEY_MISMATCH: the key sent to leave
 * zero-knowledge mode is not this vault's (nothing changed). Never retry
 * these as they are.
 */
export class ConflictError extends ApiError {
  override name = "ConflictError";
}

/**
 * 429 RATE_LIMITED: the user's request budget is spent. The SDK has
 * already waited Retry-After and retried as configured; retryAfterMs says
 * how long to wait now.
 */
export class RateLimitedError extends ApiError {
  override name = "RateLimitedError";
}

/**
 * 503 KEK_UNAVAILABLE / STORE_UNAVAILABLE: a dependency of the server is
 * down. Nothing changed. The SDK has already waited Retry-After and
 * retried as configured; retryAfterMs says how long to wait now. Keep
 * working with a key you already hold. GRANT_NOT_CONFIGURED: the server
 * has no key of the default mission worker, which only its operator can
 * fix (not retried).
 */
export class UnavailableError extends ApiError {
  override name = "UnavailableError";
}

/** 500 INTERNAL, or an answer the SDK cannot place (a proxy's error page). */
export class ServerError extends ApiError {
  override name = "ServerError";
}

/**
 * The request got no answer: offline, DNS, TLS, or — the browser does not
 * say which — a CORS refusal (is the page's origin in
 * KEYBROKER_CORS_ORIGINS?). cause is what fetch threw.
 */
export class NetworkError extends KeybrokerError {
  override name = "NetworkError";
}

/** A 2xx answer that is not what keybroker sends (a wrong baseUrl, a proxy). */
export class ProtocolError extends KeybrokerError {
  override name = "ProtocolError";
}

/**
 * The text is not a recovery code: after dropping dashes and white space
 * it must be exactly 64 hexadecimal digits. The message never repeats the
 * code.
 */
export class RecoveryCodeFormatError extends KeybrokerError {
  override name = "RecoveryCodeFormatError";
}

/**
 * The recovery code is well formed but does not open the vault's recovery
 * wrap: a typo in a digit, or a code that was replaced since.
 */
export class WrongRecoveryCodeError extends KeybrokerError {
  override name = "WrongRecoveryCodeError";
  constructor() {
    super("keybroker: the recovery code does not open this vault's recovery wrap");
  }
}

/**
 * The vault is in zero-knowledge mode and the operation needs the master
 * key: pass the user's recovery code.
 */
export class RecoveryCodeRequiredError extends KeybrokerError {
  override name = "RecoveryCodeRequiredError";
  constructor() {
    super("keybroker: the vault is in zero-knowledge mode: this needs the user's recovery code");
  }
}

type ApiErrorClass = new (init: ApiErrorInit) => ApiError;

const familyByCode: Record<ErrorCode, ApiErrorClass> = {
  VAULT_NOT_INITIALISED: NotFoundError,
  NOT_FOUND: NotFoundError,
  NO_RESTORABLE_RECOVERY_WRAP: NotFoundError,
  ZK_ROTATE_FORBIDDEN: ConflictError,
  ZK_ACTIVE: ConflictError,
  MASTER_KEY_MISMATCH: ConflictError,
  RECOVERY_WRAP_MISSING: BadRequestError,
  BAD_REQUEST: BadRequestError,
  PAYLOAD_TOO_LARGE: BadRequestError,
  METHOD_NOT_ALLOWED: BadRequestError,
  UNAUTHORIZED: AuthenticationError,
  USER_UNKNOWN: AuthenticationError,
  KEY_PROOF_REQUIRED: KeyProofError,
  KEY_PROOF_MISMATCH: KeyProofError,
  RATE_LIMITED: RateLimitedError,
  KEK_UNAVAILABLE: UnavailableError,
  STORE_UNAVAILABLE: UnavailableError,
  GRANT_NOT_CONFIGURED: UnavailableError,
  GRANT_RECIPIENT_UNKNOWN: BadRequestError,
  INTERNAL: ServerError,
};

function familyByStatus(status: number): ApiErrorClass {
  switch (status) {
    case 400:
    case 405:
    case 413:
      return BadRequestError;
    case 401:
      return AuthenticationError;
    case 404:
      return NotFoundError;
    case 409:
      return ConflictError;
    case 429:
      return RateLimitedError;
    case 503:
      return UnavailableError;
    default:
      return status >= 500 ? ServerError : ApiError;
  }
}

/**
 * The error for a non-2xx answer: the family of its code when the SDK
 * knows the code, else the family of its status.
 */
export function apiErrorFor(init: ApiErrorInit): ApiError {
  const byCode = Object.hasOwn(familyByCode, init.code) ? familyByCode[init.code as ErrorCode] : undefined;
  const Family = byCode ?? familyByStatus(init.status);
  return new Family(init);
}
