// Length-prefixed frames (4-byte big-endian length, then the body) in both directions.
// Owns: framing and the read-side size bound. Must not: interpret bodies or touch sockets.

/** Encodes `value` as one JSON frame: the length prefix, then the UTF-8 body. */
export function encodeFrame(value: unknown): Buffer {
  const json = JSON.stringify(value);
  const length = Buffer.byteLength(json);
  const frame = Buffer.allocUnsafe(4 + length);
  frame.writeUInt32BE(length, 0);
  frame.write(json, 4, "utf8");
  return frame;
}

/** A frame announced a body larger than the reader accepts. */
export class FrameTooLarge extends Error {
  override readonly name = "FrameTooLarge";
}

/**
 * Collects socket chunks and yields complete frame bodies. Holds at most one frame (bounded
 * by `max`) plus what the socket already delivered after it.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private total = 0;
  /** The body length awaited, or -1 while awaiting a length prefix. */
  private need = -1;

  constructor(private max: number) {}

  /** Raises the bound (after the welcome announced the daemon's `max_frame`). */
  setMax(max: number): void {
    this.max = max;
  }

  /** Adds `chunk` and returns the bodies it completed, in order. */
  push(chunk: Buffer): Buffer[] {
    this.chunks.push(chunk);
    this.total += chunk.length;
    const bodies: Buffer[] = [];
    for (;;) {
      if (this.need < 0) {
        if (this.total < 4) break;
        const length = this.take(4).readUInt32BE(0);
        if (length > this.max) {
          throw new FrameTooLarge(
            `the daemon sent a frame of ${length} bytes, above this client's limit of ${this.max}`,
          );
        }
        this.need = length;
      }
      if (this.total < this.need) break;
      bodies.push(this.take(this.need));
      this.need = -1;
    }
    return bodies;
  }

  private take(n: number): Buffer {
    this.total -= n;
    const first = this.chunks[0];
    if (first !== undefined && first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let offset = 0;
    while (offset < n) {
      const chunk = this.chunks[0];
      if (chunk === undefined) throw new Error("FrameReader: fewer bytes than counted");
      const k = Math.min(chunk.length, n - offset);
      chunk.copy(out, offset, 0, k);
      offset += k;
      if (k === chunk.length) this.chunks.shift();
      else this.chunks[0] = chunk.subarray(k);
    }
    return out;
  }
}
