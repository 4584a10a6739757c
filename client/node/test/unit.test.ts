// Parts that need no daemon: the socket lookup order, the framing, and how a subscription
// takes frames a real daemon sends only when something goes wrong (from a fake one).

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";

import { encodeFrame, FrameReader, FrameTooLarge } from "../src/frames.js";
import { PROTOCOL_VERSION } from "../src/generated/protocol.js";
import { DEFAULT_SOCKET, Herald, HeraldError, resolveSocket } from "../src/index.js";

test("the socket is the option, then HERALD_SOCKET, then the default", () => {
  assert.equal(resolveSocket("/run/a.sock", { HERALD_SOCKET: "/run/b.sock" }), "/run/a.sock");
  assert.equal(resolveSocket(undefined, { HERALD_SOCKET: "/run/b.sock" }), "/run/b.sock");
  assert.equal(resolveSocket(undefined, { HERALD_SOCKET: "" }), DEFAULT_SOCKET);
  assert.equal(resolveSocket(undefined, {}), "var/herald/herald.sock");
});

test("frames are a 4-byte big-endian length and a UTF-8 JSON body", () => {
  const frame = encodeFrame({ herald: 1, codec: "json" });
  assert.equal(frame.readUInt32BE(0), 27);
  assert.equal(frame.subarray(4).toString("utf8"), '{"herald":1,"codec":"json"}');
  const multibyte = encodeFrame({ body: "Grüße 🎉" });
  assert.equal(multibyte.readUInt32BE(0), multibyte.length - 4);
});

test("the reader reassembles frames split anywhere and refuses oversize ones", () => {
  const bytes = Buffer.concat([encodeFrame({ a: 1 }), encodeFrame({ b: "x".repeat(300) }), encodeFrame([])]);
  for (const step of [1, 3, 7, 64, bytes.length]) {
    const reader = new FrameReader(1024);
    const bodies: string[] = [];
    for (let i = 0; i < bytes.length; i += step) {
      for (const b of reader.push(bytes.subarray(i, i + step))) bodies.push(b.toString("utf8"));
    }
    assert.deepEqual(
      bodies.map((b) => JSON.parse(b) as unknown),
      [{ a: 1 }, { b: "x".repeat(300) }, []],
      `step ${step}`,
    );
  }
  const reader = new FrameReader(100);
  assert.throws(() => reader.push(encodeFrame({ b: "x".repeat(200) })), FrameTooLarge);
});

/** A fake daemon on a Unix socket: a welcome, then `respond` for each request frame. */
async function fakeDaemon(
  respond: (frame: { id: number; request: unknown }, send: (value: unknown) => void) => void,
): Promise<{ path: string; close: () => Promise<void> }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "herald-fake-"));
  const socketPath = path.join(dir, "herald.sock");
  const server = net.createServer((socket) => {
    const reader = new FrameReader(1 << 20);
    let greeted = false;
    const send = (value: unknown) => socket.write(encodeFrame(value));
    socket.on("data", (chunk: Buffer) => {
      for (const body of reader.push(chunk)) {
        const frame = JSON.parse(body.toString("utf8")) as { id: number; request: unknown };
        if (!greeted) {
          greeted = true;
          send({ herald: PROTOCOL_VERSION, server: "fake", max_frame: 1 << 20 });
        } else {
          respond(frame, send);
        }
      }
    });
    socket.on("error", () => {});
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return {
    path: socketPath,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => {
          rmSync(dir, { recursive: true, force: true });
          resolve();
        });
      }),
  };
}

test("a subscription the daemon ends with an error frame ends the loop with that error", { timeout: 20_000 }, async () => {
  const fake = await fakeDaemon((frame, send) => {
    const request = frame.request as Record<string, unknown>;
    if (typeof request === "object" && "subscribe" in request) {
      send({ id: frame.id, response: { subscribed: { first_seq: 1, last_seq: 0, epoch: "e1" } } });
      const event = {
        seq: 1,
        at: 1,
        kind: "queued",
        message_id: "01J",
        tags: [],
        channel: "sms",
      };
      send({ id: frame.id, response: { event } });
      send({
        id: frame.id,
        response: {
          error: {
            code: "internal",
            message: "the daemon could not read its event log; subscribe again with from_seq = 2",
          },
        },
      });
    }
  });
  const herald = await Herald.connect({ socket: fake.path });
  try {
    const sub = await herald.subscribe({}, { fromSeq: 1 });
    const seen: number[] = [];
    await assert.rejects(
      (async () => {
        for await (const e of sub) seen.push(e.seq);
      })(),
      (e: unknown) => e instanceof HeraldError && e.code === "internal" && e.detail.includes("from_seq = 2"),
    );
    assert.deepEqual(seen, [1], "the event before the error is delivered");
  } finally {
    await herald.close();
    await fake.close();
  }
});
