// Every failure is a typed error carrying the daemon's code and field, and none of them
// leaves the client unusable.

import assert from "node:assert/strict";
import path from "node:path";
import { after, before, test } from "node:test";

import { Herald, HeraldConnectionError, HeraldError, type Message } from "../src/index.js";
import { Daemon, email, MockProvider, sms } from "./harness.js";

let mock: MockProvider;
let daemon: Daemon;
let herald: Herald;

before(async () => {
  mock = await MockProvider.start();
  daemon = await Daemon.start(mock, {
    // No push route; a small queue and a small frame limit to reach `busy` and the limit.
    routes: 'email = ["hook"]\nsms = ["hook"]',
    daemon: ["max_queue = 3", "max_frame = 8192", "max_message = 4096"],
  });
  herald = await Herald.connect({ socket: daemon.socket });
});

after(async () => {
  await herald?.close();
  await daemon?.stop();
  await mock?.stop();
});

async function refusal(p: Promise<unknown>): Promise<HeraldError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof HeraldError, `expected a HeraldError, got ${String(e)}`);
    return e;
  }
  assert.fail("expected the request to be refused");
}

test("a bad address is invalid_field, naming the field", async () => {
  const e = await refusal(herald.send(sms("+1415")));
  assert.equal(e.code, "invalid_field");
  assert.equal(e.field, "to");
  assert.match(e.detail, /E\.164/);
  const e2 = await refusal(herald.send(email("ann@localhost")));
  assert.equal(e2.field, "to");
});

test("a channel without a route is no_route", async () => {
  const e = await refusal(
    herald.send({ to: "dK3x9QvTqE2mYz:APA91bHun4", content: { push: { title: "Tomorrow!" } } }),
  );
  assert.equal(e.code, "no_route");
  assert.equal(e.field, null);
});

test("an unknown channel is a malformed frame; the next call reconnects", async () => {
  // Only reachable from JavaScript that ignores the types.
  const fax = { to: "+14155550100", content: { fax: { pages: 2 } } } as unknown as Message;
  const e = await refusal(herald.send(fax));
  assert.equal(e.code, "malformed_frame");
  assert.match(e.detail, /unknown variant `fax`/);
  const stats = await herald.stats();
  assert.equal(stats.max_queue, 3);
});

test("a key reused for another message is idempotency_conflict", async () => {
  await herald.send(sms("+14155550100", "Reply YES"), { idempotencyKey: "k-conflict" });
  const e = await refusal(
    herald.send(sms("+14155550100", "Reply NO"), { idempotencyKey: "k-conflict" }),
  );
  assert.equal(e.code, "idempotency_conflict");
  assert.equal(e.field, "idempotency_key");
});

test("a request above max_frame is refused before it is sent", async () => {
  const big = { to: "ann@example.com", content: { email: { subject: "Big", text: "x".repeat(10_000) } } };
  const e = await refusal(herald.send(big));
  assert.equal(e.code, "frame_too_large");
  assert.match(e.detail, /8192/);
  // Nothing was sent, nothing is pending, the connection is fine.
  assert.equal(herald.inFlight, 0);
  assert.equal((await herald.stats()).max_queue, 3);
});

test("a full queue is busy, but a retry of an accepted message is a duplicate", async () => {
  const later = Date.now() + 3_600_000;
  const accepted = [];
  for (let i = 0; i < 3; i++) {
    accepted.push(
      await herald.send(sms(`+1415555020${i}`, "Save the date"), {
        idempotencyKey: `full-${i}`,
        sendAt: later,
      }),
    );
  }
  const e = await refusal(herald.send(sms("+14155550299", "one too many")));
  assert.equal(e.code, "busy");
  assert.equal(e.field, null);
  const retry = await herald.send(sms("+14155550200", "Save the date"), {
    idempotencyKey: "full-0",
    sendAt: later,
  });
  assert.deepEqual(retry, { id: accepted[0]!.id, duplicate: true });
  for (const a of accepted) await herald.cancel(a.id);
});

test("options out of range are refused before anything is sent", async () => {
  await assert.rejects(herald.send(sms("+14155550100"), { sendAt: 1.5 }), RangeError);
  await assert.rejects(herald.send(sms("+14155550100"), { sendAt: new Date(Number.NaN) }), RangeError);
  await assert.rejects(herald.subscribe({}, { fromSeq: -1 }), RangeError);
});

test("a socket without a daemon is connect_failed", async () => {
  const missing = path.join(daemon.dir, "nobody.sock");
  await assert.rejects(Herald.connect({ socket: missing }), (e: unknown) => {
    assert.ok(e instanceof HeraldConnectionError);
    assert.equal(e.code, "connect_failed");
    assert.match(e.message, /nobody\.sock/);
    return true;
  });
});

test("calls after close() are refused", async () => {
  const h = await Herald.connect({ socket: daemon.socket });
  const answered = h.stats(); // sent before close: still answered
  await h.close();
  assert.equal((await answered).max_queue, 3);
  await assert.rejects(h.stats(), (e: unknown) => e instanceof HeraldConnectionError && e.code === "closed");
});
