// The public client: `Herald.connect`, one method per request, subscriptions. Owns: the
// API's shapes (options in, typed answers out) and reconnecting the request connection.
// Must not: frame or parse bytes (connection.ts) or resume subscriptions (subscription.ts).

import { Connection, type ConnectionOptions } from "./connection.js";
import { HeraldConnectionError, HeraldError } from "./errors.js";
import {
  type Accepted,
  type Channel,
  type Filter,
  type Lane,
  type MessageView,
  type Request,
  type Response,
  type SendMessage,
  type Stats,
  type StoreCheck,
  type SuppressionCursor,
  type SuppressionEntry,
  type SuppressionStatus,
  type Welcome,
} from "./generated/protocol.js";
import { resolveSocket } from "./socket.js";
import { Subscription, type SubscribeOptions } from "./subscription.js";

export interface ConnectOptions {
  /** The daemon's socket; default `HERALD_SOCKET`, then `var/herald/herald.sock`. */
  socket?: string;
  /**
   * Requests awaiting an answer at once on the connection (default 1024). Beyond it, calls
   * wait — nothing is encoded or buffered for them until a slot frees up.
   */
  maxInFlight?: number;
  /** How long to wait for the daemon's welcome when connecting, in ms (default 10000). */
  handshakeTimeoutMs?: number;
}

/** A message: recipient, content (which decides the channel) and tags. */
export type Message = Omit<
  SendMessage,
  "idempotency_key" | "send_at" | "override_suppression" | "lane"
>;

export interface SendOptions {
  /**
   * Sends with the same key within the daemon's idempotency window are one message: a
   * retry is answered `duplicate: true` with the first message's id.
   */
  idempotencyKey?: string;
  /** Deliver no earlier than this (a `Date`, or Unix milliseconds). */
  sendAt?: Date | number;
  /**
   * Send even if the recipient is on the suppression list: for transactional messages the
   * host must deliver anyway (a password reset, a receipt). The message's `queued` event
   * then says the suppression was overridden.
   */
  overrideSuppression?: boolean;
  /**
   * The priority lane (default `"normal"`): `"critical"` messages are dispatched before any
   * other due message; `"bulk"` shares with `"normal"` 1:3, so a campaign never holds up
   * everyday traffic. Not the push `priority`.
   */
  lane?: Lane;
}

/** One message of a batch, with its own send options. */
export type BatchEntry = Message & SendOptions;

/** The name of a response variant, and the data it carries. */
type ResponseName<R = Response> = R extends string ? R : keyof R & string;
type Payload<K extends string, R = Response> = R extends Record<K, infer P>
  ? P
  : R extends K
    ? undefined
    : never;

function unixMillis(sendAt: Date | number | undefined): number | null {
  if (sendAt === undefined) return null;
  const ms = sendAt instanceof Date ? sendAt.getTime() : sendAt;
  if (!Number.isSafeInteger(ms) || ms < 0) {
    throw new RangeError(`sendAt must be a Date or whole Unix milliseconds, not ${String(sendAt)}`);
  }
  return ms;
}

function wire(message: Message, options: SendOptions): SendMessage {
  return {
    to: message.to,
    content: message.content,
    tags: message.tags ?? [],
    idempotency_key: options.idempotencyKey ?? null,
    send_at: unixMillis(options.sendAt),
    override_suppression: options.overrideSuppression ?? false,
    lane: options.lane ?? "normal",
  };
}

function answer<K extends ResponseName>(response: Response, name: K): Payload<K> {
  if (typeof response === "string") {
    if (response === name) return undefined as Payload<K>;
  } else if (name in response) {
    return (response as Record<string, unknown>)[name] as Payload<K>;
  }
  throw new HeraldConnectionError(
    "protocol",
    `expected a ${name} answer, got ${JSON.stringify(response).slice(0, 200)}`,
  );
}

/**
 * A client of heraldd. One instance holds one connection for requests (pipelined:
 * concurrent calls share it, answers are matched by id) and opens one more per
 * subscription. If the request connection drops, calls in flight fail with
 * {@link HeraldConnectionError} (outcome unknown) and the next call reconnects.
 *
 * ```ts
 * const herald = await Herald.connect();
 * const { id } = await herald.send(
 *   { to: "+14155550100", content: { sms: { body: "Reply YES to come" } }, tags: ["rsvp"] },
 *   { idempotencyKey: "invite-42-bob" },
 * );
 * ```
 */
export class Herald {
  private conn: Connection;
  private connecting: Promise<Connection> | null = null;
  private closing = false;
  private readonly subscriptions = new Set<Subscription>();

  private constructor(
    /** The socket this client talks to. */
    readonly socket: string,
    private readonly options: ConnectionOptions,
    conn: Connection,
  ) {
    this.conn = conn;
  }

  /**
   * Connects to heraldd. The socket is `options.socket`, then `HERALD_SOCKET`, then
   * `var/herald/herald.sock` (as the `herald` CLI looks for it).
   */
  static async connect(options: ConnectOptions = {}): Promise<Herald> {
    const maxInFlight = options.maxInFlight ?? 1024;
    if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1) {
      throw new RangeError(`maxInFlight must be a positive integer, not ${maxInFlight}`);
    }
    const connection: ConnectionOptions = {
      maxInFlight,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 10_000,
    };
    const socket = resolveSocket(options.socket);
    return new Herald(socket, connection, await Connection.open(socket, connection));
  }

  /** The daemon's welcome on the current connection: its version and `max_frame`. */
  get welcome(): Welcome {
    return this.conn.welcome;
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.conn.inFlight;
  }

  /** Calls waiting for an in-flight slot (bounded by `maxInFlight`). */
  get waiting(): number {
    return this.conn.waiting;
  }

  /**
   * Queues one message. Resolves once the daemon has it on disk: `id` is the message id (a
   * ULID string), `duplicate` is true when `idempotencyKey` matched an earlier send.
   * Rejects with {@link HeraldError} (`invalid_field`, `no_route`, `too_large`,
   * `idempotency_conflict`, `busy`, ...) or {@link HeraldConnectionError}.
   */
  async send(message: Message, options: SendOptions = {}): Promise<Accepted> {
    return this.ask({ send: wire(message, options) }, "accepted");
  }

  /**
   * Queues up to 1000 messages in one request. The answer has one item per entry, in order:
   * `{ id, duplicate }` or the {@link HeraldError} that entry got. The whole call rejects
   * (nothing queued) with `too_large` or `busy`.
   */
  async sendBatch(entries: readonly BatchEntry[]): Promise<Array<Accepted | HeraldError>> {
    const items = await this.ask(
      { send_batch: entries.map(({ idempotencyKey, sendAt, overrideSuppression, lane, ...message }) => {
        const options: SendOptions = {};
        if (idempotencyKey !== undefined) options.idempotencyKey = idempotencyKey;
        if (sendAt !== undefined) options.sendAt = sendAt;
        if (overrideSuppression !== undefined) options.overrideSuppression = overrideSuppression;
        if (lane !== undefined) options.lane = lane;
        return wire(message, options);
      }) },
      "batch_accepted",
    );
    return items.map((item) => ("accepted" in item ? item.accepted : new HeraldError(item.error)));
  }

  /** A message and its delivery state. Rejects with `not_found` or `invalid_field` (`id`). */
  async get(id: string): Promise<MessageView> {
    return this.ask({ get: { id } }, "message");
  }

  /**
   * Cancels a message that is still `queued` (including scheduled) or `deferred`. Rejects
   * with `not_cancellable` once it is being sent or finished, `not_found` if unknown.
   */
  async cancel(id: string): Promise<void> {
    await this.ask({ cancel: { id } }, "cancelled");
  }

  /** Counts per state, queue depth, the newest event's seq and per-provider counters. */
  async stats(): Promise<Stats> {
    return this.ask("stats", "stats");
  }

  /** Dead-lettered messages, oldest first (default 100, at most 10000). */
  async deadList(limit?: number): Promise<MessageView[]> {
    return this.ask({ dead_list: { limit: limit ?? null } }, "dead_list");
  }

  /** Puts dead messages back in the queue; resolves with how many were requeued. */
  async deadRequeue(ids: readonly string[]): Promise<number> {
    return (await this.ask({ dead_requeue: { ids: [...ids] } }, "requeued")).count;
  }

  /**
   * Mints a token for the browser event streams (`GET /v1/events`): its bearer sees only
   * events carrying one of `tags`, or of the messages `ids`, or everything with `admin`.
   * `ttlMs` defaults to one hour and may not exceed the daemon's `realtime.max_token_ttl`.
   * Rejects with `invalid_field` when the daemon has no `[realtime]` section.
   */
  async mintToken(
    o: { tags?: readonly string[]; ids?: readonly string[]; admin?: boolean; ttlMs?: number } = {},
  ): Promise<{ token: string; expiresAt: number }> {
    const t = await this.ask(
      {
        mint_token: {
          tags: [...(o.tags ?? [])],
          ids: [...(o.ids ?? [])],
          admin: o.admin ?? false,
          ttl_ms: o.ttlMs ?? null,
        },
      },
      "token",
    );
    return { token: t.token, expiresAt: t.expires_at };
  }

  /**
   * Checks the daemon's store against its indexes and counts and repairs what is wrong
   * (only reports with `dryRun`). Writes wait while it runs: about 1-2 s per million
   * messages.
   */
  async checkStore(options: { dryRun?: boolean } = {}): Promise<StoreCheck> {
    return this.ask({ check_store: { dry_run: options.dryRun ?? false } }, "store_checked");
  }

  /**
   * A page of the suppression list in (channel, key) order: at most `limit` entries
   * (default 100, at most 1000) after the cursor `after` (the previous page's `next`).
   * `next` is null when this page ends the list.
   */
  async suppressionList(
    o: { after?: SuppressionCursor | null; limit?: number } = {},
  ): Promise<{ entries: SuppressionEntry[]; next: SuppressionCursor | null }> {
    return this.ask(
      { suppression_list: { after: o.after ?? null, limit: o.limit ?? null } },
      "suppression_list",
    );
  }

  /**
   * Puts `recipient` on `channel`'s suppression list (source `operator`), once on disk.
   * `added` is false when it was on the list already (its entry stays). Rejects with
   * `invalid_field` (`recipient`, `reason`).
   */
  async suppressionAdd(
    channel: Channel,
    recipient: string,
    reason: string,
  ): Promise<{ entry: SuppressionEntry; added: boolean }> {
    return this.ask({ suppression_add: { channel, recipient, reason } }, "suppression_added");
  }

  /**
   * Takes `recipient` (any spelling of it) off `channel`'s suppression list; resolves with
   * the entry removed, or null when it was not on the list.
   */
  async suppressionRemove(channel: Channel, recipient: string): Promise<SuppressionEntry | null> {
    return (await this.ask({ suppression_remove: { channel, recipient } }, "suppression_removed"))
      .entry;
  }

  /** Whether each recipient (at most 1000) is on `channel`'s suppression list, in order. */
  async suppressionCheck(
    channel: Channel,
    recipients: readonly string[],
  ): Promise<SuppressionStatus[]> {
    return this.ask(
      { suppression_check: { channel, recipients: [...recipients] } },
      "suppression_checked",
    );
  }

  /**
   * Re-reads and applies the daemon's config file; resolves with a summary. Rejects with
   * `config_rejected` (the running config stays) when the file is invalid.
   */
  async reload(): Promise<string> {
    return (await this.ask("reload", "reloaded")).detail;
  }

  /**
   * Subscribes to the events matching `filter` (every field optional; empty matches
   * everything) on a connection of its own. Resolves once the daemon has registered it:
   * anything that happens afterwards is delivered. Iterate it with `for await`; it
   * reconnects and resumes by itself if the connection drops.
   */
  async subscribe(filter: Filter = {}, options: SubscribeOptions = {}): Promise<Subscription> {
    if (this.closing) throw new HeraldConnectionError("closed", "this Herald client was closed");
    const sub = await Subscription.open(this.socket, filter, options, this.options);
    this.subscriptions.add(sub);
    sub.onClosed(() => this.subscriptions.delete(sub));
    return sub;
  }

  /**
   * Closes the client: ends its subscriptions, and closes the request connection after the
   * daemon has answered every request already sent (new calls are refused at once).
   */
  async close(): Promise<void> {
    this.closing = true;
    await Promise.all([...this.subscriptions].map((s) => s.close()));
    await this.conn.end();
  }

  /** Sends `request` and returns the data of its `name` answer. */
  private async ask<K extends ResponseName>(request: Request, name: K): Promise<Payload<K>> {
    if (this.closing) throw new HeraldConnectionError("closed", "this Herald client was closed");
    // Synchronous while connected, so that a burst of calls queues its requests in order.
    const conn = this.conn.isClosed ? await this.reconnect() : this.conn;
    return answer(await conn.request(request), name);
  }

  /** Reopens the request connection after it dropped (one attempt per burst of calls). */
  private reconnect(): Promise<Connection> {
    this.connecting ??= Connection.open(this.socket, this.options)
      .then((conn) => {
        this.conn = conn;
        return conn;
      })
      .finally(() => {
        this.connecting = null;
      });
    return this.connecting;
  }
}
