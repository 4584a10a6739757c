// A subscription survives a daemon SIGKILL and restart, yielding every event exactly once,
// in seq order.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Herald, type Event, type Subscription } from "../src/index.js";
import { Daemon, MockProvider } from "./harness.js";

let mock: MockProvider;
let daemon: Daemon;

before(async () => {
  mock = await MockProvider.start();
  daemon = await Daemon.start(mock);
});

after(async () => {
  await daemon?.stop();
  await mock?.stop();
});

/** Collects events until every id in `ids` has had a `sent` event. */
function collect(sub: Subscription, seen: Event[], sent: Set<string>) {
  return async (ids: readonly string[]) => {
    const want = () => ids.every((id) => sent.has(id));
    // next() rather than `for await`: leaving a for-await loop would close the subscription.
    while (!want()) {
      const r = await sub.next();
      if (r.done === true) throw new Error("the subscription ended");
      seen.push(r.value);
      if (r.value.kind === "sent" && r.value.message_id !== null) sent.add(r.value.message_id);
    }
  };
}

test("a subscription resumes across SIGKILL and restart with no gap and no duplicate", async () => {
  const herald = await Herald.connect({ socket: daemon.socket });
  const reconnects: number[] = [];
  const sub = await herald.subscribe(
    { tags: ["wedding"] },
    {
      fromSeq: 0,
      reconnect: { initialDelayMs: 20, maxDelayMs: 250 },
      onReconnect: ({ attempt }) => reconnects.push(attempt),
    },
  );
  const seen: Event[] = [];
  const sent = new Set<string>();
  const until = collect(sub, seen, sent);
  const send = async (n: number, from: number) => {
    const ids: string[] = [];
    for (let i = from; i < from + n; i++) {
      const ack = await herald.send(
        { to: `guest${i}@example.com`, content: { email: { subject: "RSVP", text: "?" } }, tags: ["wedding"] },
        { idempotencyKey: `wedding-${i}` },
      );
      ids.push(ack.id);
    }
    return ids;
  };

  // Part of the traffic is still being delivered when the daemon is killed.
  const before = await send(40, 0);
  const half = until(before.slice(0, 10));
  await half;
  await daemon.kill();
  await daemon.restart();
  // The request connection reconnects by itself on the next call.
  const afterRestart = await send(40, 40);
  await until([...before, ...afterRestart]);
  await sub.close();

  assert.ok(sub.reconnects >= 1, "the subscription reconnected");
  assert.ok(reconnects.length >= 1);
  const seqs = seen.map((e) => e.seq);
  for (let i = 1; i < seqs.length; i++) {
    assert.ok(seqs[i]! > seqs[i - 1]!, `seq ${seqs[i]} after ${seqs[i - 1]}: out of order or repeated`);
  }

  // Exactly the log: a fresh replay of the same filter up to the last seq seen matches.
  const last = seqs[seqs.length - 1]!;
  const replay = await herald.subscribe({ tags: ["wedding"] }, { fromSeq: 0 });
  const logged: number[] = [];
  for await (const e of replay) {
    if (e.seq > last) break;
    logged.push(e.seq);
    if (e.seq === last) break;
  }
  assert.deepEqual(seqs, logged, "every event of the log, once, in order");
  await herald.close();
});

test("close() ends a subscription that is waiting to reconnect", async () => {
  const herald = await Herald.connect({ socket: daemon.socket });
  let attempts = 0;
  let notify: () => void = () => {};
  const reconnecting = new Promise<void>((resolve) => (notify = resolve));
  const sub = await herald.subscribe(
    {},
    {
      reconnect: { initialDelayMs: 20, maxDelayMs: 100 },
      onReconnect: () => {
        attempts++;
        if (attempts >= 2) notify();
      },
    },
  );
  const next = sub.next();
  await daemon.kill();
  await reconnecting; // the daemon is down: attempts keep failing
  await sub.close();
  assert.deepEqual(await next, { value: undefined, done: true });
  await daemon.restart();
  await herald.close();
});
