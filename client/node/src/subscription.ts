// A subscription as an async iterator of events, on its own connection, that survives the
// connection dropping: it reconnects with backoff and resubscribes from the seq after the
// last event it received, so the consumer sees every matching event exactly once, in seq
// order. Owns: resume points, gap and reset detection, the event buffer and its bound.
// Must not: send anything but subscribe/unsubscribe.

import { Connection, type ConnectionOptions } from "./connection.js";
import { HeraldConnectionError, HeraldError, SubscriptionGapError } from "./errors.js";
import type { Event, Filter, Response } from "./generated/protocol.js";

export interface ReconnectOptions {
  /** First delay before reconnecting, in ms (default 100). Doubles per failed attempt. */
  initialDelayMs?: number;
  /** Longest delay between attempts, in ms (default 5000). */
  maxDelayMs?: number;
  /** Attempts before the iteration fails with the last error (default: no limit). */
  maxAttempts?: number;
}

export interface SubscribeOptions {
  /**
   * Replay the retained events with `seq >= fromSeq` first (`0`: everything retained), then
   * continue live. Without it, only events after the subscription started.
   */
  fromSeq?: number;
  /** Ends the iteration (as `close()` does) when aborted. */
  signal?: AbortSignal;
  reconnect?: ReconnectOptions;
  /** Called before each reconnection attempt (for logging). */
  onReconnect?: (info: { attempt: number; delayMs: number; error: Error }) => void;
  /**
   * Events buffered while the consumer is busy before this subscription stops reading from
   * the socket (default 1000). The daemon then waits: its event log is the buffer.
   */
  highWaterMark?: number;
}

interface Waiter {
  resolve(result: IteratorResult<Event>): void;
  reject(error: Error): void;
}

type Subscribed = { first_seq: number; last_seq: number; epoch: string };

function subscribedOf(r: Response): Subscribed | undefined {
  return typeof r === "object" && "subscribed" in r ? r.subscribed : undefined;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * An event stream: `for await (const event of subscription) { ... }`. Leaving the loop
 * (`break`, `return`, a thrown error) or calling {@link Subscription.close} ends it.
 *
 * If the connection drops (the daemon restarts, say), the subscription reconnects with
 * exponential backoff and resumes after the last event it received: no gap, no duplicate.
 * If that is impossible — the daemon's retention removed undelivered events meanwhile, or
 * the daemon's log is older than what was already delivered — the iteration throws
 * ({@link SubscriptionGapError}, {@link HeraldConnectionError}) instead of skipping.
 */
export class Subscription implements AsyncIterableIterator<Event> {
  private conn: Connection | null = null;
  private streamId = 0;
  /** The daemon's store epoch seen at the first `subscribed`: seqs belong to that log. */
  private epoch: string | null = null;
  /** The seq the next event must have at least; `null` until the first `subscribed`. */
  private resume: number | null;
  private readonly buffer: Event[] = [];
  private readonly waiters: Waiter[] = [];
  private failure: Error | null = null;
  private done = false;
  private paused = false;
  private readonly stop = new AbortController();
  private readonly closeListeners: Array<() => void> = [];
  private _firstSeq = 0;
  private _lastSeq = 0;
  private _reconnects = 0;
  private readonly highWaterMark: number;

  private constructor(
    private readonly path: string,
    private readonly filter: Filter,
    private readonly options: SubscribeOptions,
    private readonly connection: ConnectionOptions,
  ) {
    this.resume = options.fromSeq ?? null;
    this.highWaterMark = Math.max(1, options.highWaterMark ?? 1000);
  }

  /** @internal Use `Herald.subscribe`. */
  static async open(
    path: string,
    filter: Filter,
    options: SubscribeOptions,
    connection: ConnectionOptions,
  ): Promise<Subscription> {
    const from = options.fromSeq;
    if (from !== undefined && !(Number.isSafeInteger(from) && from >= 0)) {
      throw new RangeError(`fromSeq must be an integer from 0 to 2^53 - 1, not ${from}`);
    }
    const sub = new Subscription(path, filter, options, connection);
    const signal = options.signal;
    if (signal?.aborted) throw new HeraldConnectionError("closed", "the signal was already aborted");
    await sub.attach(true);
    signal?.addEventListener("abort", () => void sub.close(), { once: true });
    return sub;
  }

  /** The oldest retained event when the subscription last (re)started (`0`: none). */
  get firstSeq(): number {
    return this._firstSeq;
  }

  /** The newest durable event when the subscription last (re)started. */
  get lastSeq(): number {
    return this._lastSeq;
  }

  /** How many times the subscription reconnected. */
  get reconnects(): number {
    return this._reconnects;
  }

  [Symbol.asyncIterator](): Subscription {
    return this;
  }

  next(): Promise<IteratorResult<Event>> {
    const event = this.buffer.shift();
    if (event !== undefined) {
      this.maybeResume();
      return Promise.resolve({ value: event, done: false });
    }
    if (this.failure !== null) {
      const failure = this.failure;
      this.failure = null;
      return Promise.reject(failure);
    }
    if (this.done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  async return(): Promise<IteratorResult<Event>> {
    await this.close();
    return { value: undefined, done: true };
  }

  /**
   * Ends the subscription: unsubscribes, closes its connection, and ends the iteration
   * (events still buffered are dropped).
   */
  async close(): Promise<void> {
    if (!this.done) this.finish(null);
    const conn = this.conn;
    this.conn = null;
    if (conn === null || conn.isClosed) return;
    conn.resume();
    try {
      await conn.request({ unsubscribe: { subscription: this.streamId } });
    } catch {
      // The connection is going away anyway.
    }
    await conn.end();
  }

  /** @internal */
  onClosed(listener: () => void): void {
    if (this.done) listener();
    else this.closeListeners.push(listener);
  }

  /** Connects and subscribes from the resume point; resolves once `subscribed` arrived. */
  private async attach(initial: boolean): Promise<void> {
    const conn = await Connection.open(this.path, this.connection);
    if (this.done) {
      conn.destroy();
      return;
    }
    const from = this.resume;
    let answered = false;
    await new Promise<void>((resolve, reject) => {
      conn.onClose((error) => {
        if (!answered) reject(error);
        else if (this.conn === conn) this.disconnected(error);
      });
      this.streamId = conn.openStream(
        { subscribe: { filter: this.filter, from_seq: from } },
        (response) => {
          if (answered) {
            if (typeof response === "object" && "event" in response) this.received(response.event);
            // The daemon ended the subscription (it could not read its event log): the
            // iteration ends with that error once what was received is taken.
            else if (typeof response === "object" && "error" in response && this.conn === conn)
              this.finish(new HeraldError(response.error));
            return;
          }
          answered = true;
          if (this.done) {
            // Closed while (re)subscribing.
            conn.destroy();
            resolve();
            return;
          }
          const subscribed = subscribedOf(response);
          if (subscribed === undefined) {
            conn.destroy();
            const error =
              typeof response === "object" && "error" in response
                ? new HeraldError(response.error)
                : new HeraldConnectionError(
                    "protocol",
                    `expected subscribed, got ${JSON.stringify(response)}`,
                  );
            reject(error);
            return;
          }
          try {
            if (!initial) this.checkResumable(subscribed, from);
          } catch (e) {
            conn.destroy();
            reject(e as Error);
            return;
          }
          this.epoch ??= subscribed.epoch;
          this._firstSeq = subscribed.first_seq;
          this._lastSeq = subscribed.last_seq;
          this.resume ??= subscribed.last_seq + 1;
          this.conn = conn;
          if (this.paused) conn.pause();
          resolve();
        },
      );
    });
  }

  /** Refuses to resume where events would be missing or repeated. */
  private checkResumable(s: Subscribed, from: number | null): void {
    if (this.epoch !== null && s.epoch !== this.epoch) {
      throw new HeraldConnectionError(
        "protocol",
        `the daemon's event log is another one (epoch ${s.epoch}, was ${this.epoch}): its data ` +
          `directory was replaced, so the seqs this subscription received mean nothing there`,
      );
    }
    if (from === null) return;
    if (s.last_seq + 1 < from) {
      throw new HeraldConnectionError(
        "protocol",
        `the daemon's event log ends at seq ${s.last_seq}, before events this subscription ` +
          `already received (up to ${from - 1}): was its data directory replaced?`,
      );
    }
    const needed = Math.max(from, 1);
    const oldest = s.first_seq === 0 ? s.last_seq + 1 : s.first_seq;
    if (needed < oldest && needed <= s.last_seq) throw new SubscriptionGapError(needed, oldest);
  }

  private received(event: Event): void {
    if (this.done || (this.resume !== null && event.seq < this.resume)) return;
    this.resume = event.seq + 1;
    const waiter = this.waiters.shift();
    if (waiter !== undefined) {
      waiter.resolve({ value: event, done: false });
      return;
    }
    this.buffer.push(event);
    if (!this.paused && this.buffer.length >= this.highWaterMark) {
      this.paused = true;
      this.conn?.pause();
    }
  }

  private maybeResume(): void {
    if (this.paused && this.buffer.length <= this.highWaterMark / 2) {
      this.paused = false;
      this.conn?.resume();
    }
  }

  private disconnected(error: Error): void {
    this.conn = null;
    if (!this.done) void this.reconnect(error);
  }

  private async reconnect(error: Error): Promise<void> {
    const r = this.options.reconnect ?? {};
    const initial = r.initialDelayMs ?? 100;
    const max = r.maxDelayMs ?? 5000;
    const attempts = r.maxAttempts ?? Infinity;
    let last = error;
    for (let attempt = 1; !this.done; attempt++) {
      if (attempt > attempts) {
        this.finish(last);
        return;
      }
      const delayMs = Math.round(Math.min(max, initial * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2));
      this.options.onReconnect?.({ attempt, delayMs, error: last });
      await sleep(delayMs, this.stop.signal);
      if (this.done) return;
      try {
        await this.attach(false);
        this._reconnects++;
        return;
      } catch (e) {
        last = e as Error;
        // A refusal from the daemon or an unresumable position will not fix itself.
        if (
          e instanceof HeraldError ||
          e instanceof SubscriptionGapError ||
          (e instanceof HeraldConnectionError && e.code === "protocol")
        ) {
          this.finish(last);
          return;
        }
      }
    }
  }

  /** Ends the iteration, with `error` once the buffer is drained. */
  private finish(error: Error | null): void {
    if (this.done) return;
    this.done = true;
    this.stop.abort();
    if (error !== null) {
      this.conn?.destroy();
      this.conn = null;
    }
    for (const waiter of this.waiters.splice(0)) {
      if (error !== null && this.failure === null) {
        waiter.reject(error);
        error = null;
      } else {
        waiter.resolve({ value: undefined, done: true });
      }
    }
    if (error !== null) {
      this.failure = error;
    } else {
      this.buffer.length = 0;
    }
    for (const listener of this.closeListeners.splice(0)) listener();
  }
}
