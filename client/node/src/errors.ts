// The error classes of @herald/client. Owns: how a failure is typed and worded. Must not:
// decide retries or touch sockets.

import type { ErrorBody, ErrorCode } from "./generated/protocol.js";

/**
 * An error answer from heraldd: the request was refused and not applied. Branch on `code`
 * (the daemon's machine-readable code); `field` names the offending field for
 * `invalid_field` (`to`, `subject`, ...) and `idempotency_conflict` (`idempotency_key`).
 * `message` is for people and logs. A `frame_too_large` error may also come from this
 * package, which refuses a request larger than the daemon's `max_frame` before sending it.
 */
export class HeraldError extends Error {
  override readonly name = "HeraldError";
  readonly code: ErrorCode;
  readonly field: string | null;
  /** The daemon's own explanation, without the code prefix of `message`. */
  readonly detail: string;

  constructor(body: ErrorBody) {
    super(
      body.field === null || body.field === undefined
        ? `${body.code}: ${body.message}`
        : `${body.code} (${body.field}): ${body.message}`,
    );
    this.code = body.code;
    this.field = body.field ?? null;
    this.detail = body.message;
  }

  /** The error as the daemon sent it. */
  toJSON(): ErrorBody {
    return { code: this.code, message: this.detail, field: this.field };
  }
}

/** Why a connection-level failure happened. */
export type ConnectionErrorCode =
  /** The socket could not be opened (no daemon, wrong path, no permission). */
  | "connect_failed"
  /** The connection ended while the request was unanswered: its outcome is unknown. */
  | "connection_closed"
  /** The daemon said something this package does not understand. */
  | "protocol"
  /** `close()` was called on this client or subscription. */
  | "closed";

/**
 * The connection to heraldd failed. For a request this means its outcome is unknown: a send
 * may or may not have been accepted, so retry sends with the same `idempotencyKey` (a retry
 * of an accepted send is answered `duplicate`).
 */
export class HeraldConnectionError extends Error {
  override readonly name = "HeraldConnectionError";
  readonly code: ConnectionErrorCode;

  constructor(code: ConnectionErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/**
 * A subscription could not resume without a gap: while it was disconnected, the daemon's
 * retention removed events it had not delivered yet (`fromSeq` up to `firstSeq - 1`). The
 * iteration ends with this error rather than skip them silently; subscribe again (from
 * `firstSeq`) after reconciling with `get`.
 */
export class SubscriptionGapError extends Error {
  override readonly name = "SubscriptionGapError";

  constructor(
    /** The first seq the subscription still needed. */
    readonly fromSeq: number,
    /** The oldest seq the daemon still has. */
    readonly firstSeq: number,
  ) {
    super(
      `events ${fromSeq} to ${firstSeq - 1} were removed by the daemon's retention while this ` +
        `subscription was disconnected; they cannot be delivered`,
    );
  }
}
