// Parts that need no daemon: the socket lookup order and the framing.

import assert from "node:assert/strict";
import { test } from "node:test";

import { encodeFrame, FrameReader, FrameTooLarge } from "../src/frames.js";
import { DEFAULT_SOCKET, resolveSocket } from "../src/index.js";

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
