// Many requests on one connection: answered by id, with a bounded number in flight.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Herald } from "../src/index.js";
import { Daemon, eventually, MockProvider } from "./harness.js";

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

test("10,000 sends pipelined on one connection, at most maxInFlight at a time", async () => {
  const N = 10_000;
  const maxInFlight = 256;
  const herald = await Herald.connect({ socket: daemon.socket, maxInFlight });
  let peak = 0;
  const sample = setInterval(() => {
    peak = Math.max(peak, herald.inFlight);
  }, 1);
  const sends = [];
  for (let i = 0; i < N; i++) {
    sends.push(
      herald.send({
        to: `guest${i}@example.com`,
        content: { email: { subject: "Save the date", text: `Guest ${i}` } },
        tags: ["bulk"],
      }),
    );
  }
  // The calls beyond the bound wait unencoded; only maxInFlight requests are out.
  assert.equal(herald.inFlight, maxInFlight);
  assert.equal(herald.waiting, N - maxInFlight);
  const acks = await Promise.all(sends);
  clearInterval(sample);
  peak = Math.max(peak, herald.inFlight);
  assert.ok(peak <= maxInFlight, `peak ${peak}`);
  assert.equal(herald.inFlight, 0);
  assert.equal(herald.waiting, 0);
  assert.equal(new Set(acks.map((a) => a.id)).size, N, "every send got its own id");
  assert.ok(acks.every((a) => !a.duplicate));
  // Answers matched their requests: spot-check that each id is the message sent.
  for (const i of [0, 1, 4_999, N - 1]) {
    assert.equal((await herald.get(acks[i]!.id)).to, `guest${i}@example.com`);
  }
  // And every one of them reaches the provider.
  await eventually(
    "every message at the provider",
    async () => (new Set(mock.received.map((r) => r.id)).size >= N ? true : undefined),
    240_000,
  );
  // The provider answers before the daemon commits `sent`: the last completions may
  // still be on their way when the mock has seen every message.
  await eventually(
    "every message sent",
    async () => {
      const stats = await herald.stats();
      return stats.states.find(([s]) => s === "sent")?.[1] === N ? true : undefined;
    },
    60_000,
  );
  await herald.close();
});
