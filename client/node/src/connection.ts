// One socket connection to heraldd: the handshake, pipelined requests matched by id,
// streams (subscriptions) by the id of their request, bounded in-flight requests, writes
// that respect the socket's backpressure, and what happens when the connection ends.
// Owns: the wire. Must not: retry, reconnect or shape the public API (herald.ts and
// subscription.ts do).

import net from "node:net";

import { HeraldConnectionError, HeraldError } from "./errors.js";
import { encodeFrame, FrameReader } from "./frames.js";
import {
  DEFAULT_MAX_FRAME,
  MAX_SAFE_INTEGER,
  PROTOCOL_VERSION,
  type ErrorBody,
  type Request,
  type Response,
  type Welcome,
} from "./generated/protocol.js";

export interface ConnectionOptions {
  /** Requests awaiting an answer at once; further requests wait for a free slot. */
  maxInFlight: number;
  /** How long to wait for the daemon's welcome. */
  handshakeTimeoutMs: number;
}

interface Pending {
  resolve(response: Response): void;
  reject(error: Error): void;
}

interface SlotWaiter {
  resolve(): void;
  reject(error: Error): void;
}

type StreamHandler = (response: Response) => void;

interface ServerFrame {
  id: number;
  response: Response;
}

/** Error codes after which the daemon reads nothing more and closes the connection. */
const CLOSING: ReadonlySet<string> = new Set(["malformed_frame", "frame_too_large", "unsupported_protocol"]);

function errorOf(response: Response): ErrorBody | undefined {
  return typeof response === "object" && "error" in response ? response.error : undefined;
}

function parseFrame(body: Buffer): unknown {
  return JSON.parse(body.toString("utf8"));
}

/** Frames from the daemon may exceed `max_frame` (events carry what they carry). */
function readLimit(maxFrame: number): number {
  return Math.max(maxFrame, DEFAULT_MAX_FRAME) * 4;
}

export class Connection {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly streams = new Map<number, StreamHandler>();
  private free: number;
  private readonly slotWaiters: SlotWaiter[] = [];
  private queue: Buffer[] = [];
  private flushScheduled = false;
  private waitingDrain = false;
  private ending = false;
  /** The daemon announced it is closing this connection (a connection-level error). */
  private doomed = false;
  private closedWith: HeraldConnectionError | null = null;
  /** A connection-level error frame (id 0) the daemon sent before closing. */
  private farewell: HeraldError | null = null;
  private readonly closeListeners: Array<(error: HeraldConnectionError) => void> = [];
  /** Resolves when the socket has closed. */
  readonly closed: Promise<void>;

  private constructor(
    private readonly socket: net.Socket,
    readonly welcome: Welcome,
    private readonly path: string,
    options: ConnectionOptions,
    private readonly reader: FrameReader,
  ) {
    this.free = options.maxInFlight;
    reader.setMax(readLimit(welcome.max_frame));
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("error", () => {
      // Reported through "close", which always follows.
    });
    this.closed = new Promise((resolve) => socket.once("close", () => resolve()));
    socket.once("close", () => this.handleClose());
  }

  /** Connects to `path`, says hello (JSON) and waits for the welcome. */
  static open(path: string, options: ConnectionOptions): Promise<Connection> {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection({ path });
      const reader = new FrameReader(readLimit(DEFAULT_MAX_FRAME));
      let settled = false;
      const finish = (error: Error | null, conn?: Connection) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.off("data", onData);
        socket.off("error", onError);
        socket.off("close", onClose);
        if (error !== null || conn === undefined) {
          socket.destroy();
          reject(error);
        } else {
          resolve(conn);
        }
      };
      const timer = setTimeout(
        () =>
          finish(
            new HeraldConnectionError(
              "protocol",
              `no welcome from ${path} within ${options.handshakeTimeoutMs} ms: is heraldd listening there?`,
            ),
          ),
        options.handshakeTimeoutMs,
      );
      const onError = (e: Error) =>
        finish(
          new HeraldConnectionError(
            "connect_failed",
            `cannot connect to ${path}: ${e.message} (is heraldd running? pass { socket } or set HERALD_SOCKET)`,
            { cause: e },
          ),
        );
      const onClose = () =>
        finish(
          new HeraldConnectionError(
            "connection_closed",
            `${path} closed the connection during the handshake`,
          ),
        );
      const onData = (chunk: Buffer) => {
        let bodies: Buffer[];
        try {
          bodies = reader.push(chunk);
        } catch (e) {
          finish(new HeraldConnectionError("protocol", String(e), { cause: e }));
          return;
        }
        const first = bodies[0];
        if (first === undefined) return;
        if (bodies.length > 1) {
          finish(new HeraldConnectionError("protocol", "the daemon sent frames before its welcome"));
          return;
        }
        let hello: unknown;
        try {
          hello = parseFrame(first);
        } catch (e) {
          finish(new HeraldConnectionError("protocol", `the welcome is not JSON: ${String(e)}`));
          return;
        }
        // A refused hello is an error frame (always JSON); a welcome has `herald`.
        const refused =
          typeof hello === "object" && hello !== null && "response" in hello
            ? errorOf((hello as ServerFrame).response)
            : undefined;
        if (refused !== undefined) {
          finish(new HeraldError(refused));
          return;
        }
        const welcome = hello as Partial<Welcome>;
        if (typeof welcome.herald !== "number" || typeof welcome.max_frame !== "number") {
          finish(new HeraldConnectionError("protocol", `not a welcome: ${first.toString("utf8")}`));
          return;
        }
        if (welcome.herald !== PROTOCOL_VERSION) {
          finish(
            new HeraldConnectionError(
              "protocol",
              `the daemon (${String(welcome.server)}) speaks protocol ${welcome.herald}, this client ${PROTOCOL_VERSION}`,
            ),
          );
          return;
        }
        finish(null, new Connection(socket, welcome as Welcome, path, options, reader));
      };
      socket.on("data", onData);
      socket.once("error", onError);
      socket.once("close", onClose);
      socket.once("connect", () =>
        socket.write(encodeFrame({ herald: PROTOCOL_VERSION, codec: "json" })),
      );
    });
  }

  /** Whether the connection has ended or is ending (no request can be sent on it). */
  get isClosed(): boolean {
    return this.closedWith !== null || this.doomed || this.ending;
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.pending.size;
  }

  /** Requests waiting for a free in-flight slot (not yet encoded). */
  get waiting(): number {
    return this.slotWaiters.length;
  }

  /** Calls `listener` once when the connection ends (at once if it already has). */
  onClose(listener: (error: HeraldConnectionError) => void): void {
    if (this.closedWith !== null) listener(this.closedWith);
    else this.closeListeners.push(listener);
  }

  /**
   * Sends `request` and resolves with its answer; an `error` answer rejects with a
   * {@link HeraldError}. Waits (without encoding anything) while `maxInFlight` requests are
   * unanswered.
   */
  async request(request: Request): Promise<Response> {
    if (this.free > 0 && this.slotWaiters.length === 0 && !this.unusable()) this.free--;
    else await this.acquire();
    let frame: Buffer;
    const id = this.takeId();
    try {
      frame = this.encode(id, request);
    } catch (e) {
      this.release();
      throw e;
    }
    return new Promise<Response>((resolve, reject) => {
      // The connection may have ended while this request waited for its slot.
      const error = this.unusable();
      if (error !== null) {
        this.release();
        reject(error);
        return;
      }
      this.pending.set(id, { resolve, reject });
      this.enqueue(frame);
    });
  }

  /**
   * Sends a request that is answered by a stream of frames (`subscribe`): every frame with
   * its id goes to `handler`, in order, until the connection ends. Not counted in flight.
   * Returns the request id.
   */
  openStream(request: Request, handler: StreamHandler): number {
    const error = this.unusable();
    if (error !== null) throw error;
    const id = this.takeId();
    const frame = this.encode(id, request);
    this.streams.set(id, handler);
    this.enqueue(frame);
    return id;
  }

  /** Stops reading from the socket (the daemon then stops sending: its log is the buffer). */
  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  /**
   * Ends the connection gracefully: no new requests; the write side is closed after what is
   * queued, and the daemon answers every request it read before closing its side. Resolves
   * when the socket has closed.
   */
  async end(): Promise<void> {
    if (!this.ending && this.closedWith === null) {
      this.ending = true;
      this.socket.resume();
      this.writeQueued();
      this.socket.end();
    }
    await this.closed;
  }

  /** Ends the connection at once; unanswered requests fail as closed. */
  destroy(): void {
    this.socket.destroy();
  }

  private takeId(): number {
    const id = this.nextId;
    // Ids stay below 2^53 (the daemon refuses larger ones); wrap long before that.
    this.nextId = id >= MAX_SAFE_INTEGER ? 1 : id + 1;
    return id;
  }

  private unusable(): HeraldConnectionError | null {
    if (this.closedWith !== null) return this.closedWith;
    if (this.ending) {
      return new HeraldConnectionError("closed", "this connection is closing: no new requests");
    }
    if (this.doomed) {
      return new HeraldConnectionError(
        "connection_closed",
        `heraldd is closing this connection: ${this.farewell?.message ?? "after a connection-level error"}`,
      );
    }
    return null;
  }

  private acquire(): Promise<void> {
    const error = this.unusable();
    if (error !== null) return Promise.reject(error);
    return new Promise<void>((resolve, reject) => {
      this.slotWaiters.push({ resolve, reject });
    });
  }

  private release(): void {
    const next = this.slotWaiters.shift();
    if (next !== undefined) next.resolve();
    else this.free++;
  }

  private encode(id: number, request: Request): Buffer {
    const frame = encodeFrame({ id, request });
    const length = frame.length - 4;
    if (length > this.welcome.max_frame) {
      throw new HeraldError({
        code: "frame_too_large",
        message:
          `the request is ${length} bytes encoded and the daemon accepts frames of at most ` +
          `${this.welcome.max_frame} bytes (daemon.max_frame); not sent`,
        field: null,
      });
    }
    return frame;
  }

  private enqueue(frame: Buffer): void {
    this.queue.push(frame);
    if (!this.flushScheduled && !this.waitingDrain) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  /** Writes everything queued in one write, unless the socket asked us to wait. */
  private flush(): void {
    this.flushScheduled = false;
    if (this.waitingDrain || this.closedWith !== null) return;
    if (!this.writeQueued()) {
      this.waitingDrain = true;
      this.socket.once("drain", () => {
        this.waitingDrain = false;
        this.flush();
      });
    }
  }

  /** Hands the queue to the socket; false when its buffer is full. */
  private writeQueued(): boolean {
    if (this.queue.length === 0) return true;
    const data = this.queue.length === 1 ? this.queue[0]! : Buffer.concat(this.queue);
    this.queue = [];
    return this.socket.write(data);
  }

  private onData(chunk: Buffer): void {
    let bodies: Buffer[];
    try {
      bodies = this.reader.push(chunk);
    } catch (e) {
      this.fail(new HeraldConnectionError("protocol", String(e), { cause: e }));
      return;
    }
    for (const body of bodies) {
      let frame: ServerFrame;
      try {
        frame = parseFrame(body) as ServerFrame;
      } catch (e) {
        this.fail(new HeraldConnectionError("protocol", `a frame is not JSON: ${String(e)}`));
        return;
      }
      this.dispatch(frame);
    }
  }

  private dispatch(frame: ServerFrame): void {
    const stream = this.streams.get(frame.id);
    if (stream !== undefined) {
      stream(frame.response);
      return;
    }
    const error = errorOf(frame.response);
    if (error !== undefined && CLOSING.has(error.code)) {
      // The daemon reads nothing more on this connection and closes it once it has answered
      // what it read: refuse new requests here at once.
      this.doomed = true;
      this.farewell = new HeraldError(error);
    }
    const pending = this.pending.get(frame.id);
    if (pending === undefined) return;
    this.pending.delete(frame.id);
    this.release();
    if (error !== undefined) pending.reject(new HeraldError(error));
    else pending.resolve(frame.response);
  }

  private fail(error: HeraldConnectionError): void {
    this.closedWith ??= error;
    this.socket.destroy();
  }

  private handleClose(): void {
    const unanswered = this.pending.size;
    const reason =
      this.closedWith?.message ??
      (this.farewell !== null
        ? `heraldd closed the connection: ${this.farewell.message}`
        : this.ending
          ? "the connection was closed by this client"
          : `heraldd closed the connection (${this.path})`);
    const error =
      this.closedWith ??
      new HeraldConnectionError(
        this.ending && unanswered === 0 ? "closed" : "connection_closed",
        unanswered > 0
          ? `${reason}; the outcome of ${unanswered} unanswered request(s) is unknown (retry sends with their idempotency key)`
          : reason,
      );
    this.closedWith = error;
    this.queue = [];
    for (const p of this.pending.values()) p.reject(error);
    this.pending.clear();
    for (const w of this.slotWaiters.splice(0)) w.reject(error);
    this.streams.clear();
    for (const l of this.closeListeners.splice(0)) l(error);
  }
}
