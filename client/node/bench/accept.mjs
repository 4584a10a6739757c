// Accept throughput of @herald/client: N sends, closed loop, `--in-flight` of them always
// outstanding on ONE connection (each worker sends the next as soon as its previous one is
// acknowledged) — the load herald-bench's `node` scenario runs, with the same ~300-byte
// email it sends with the Rust client. Prints one JSON line:
//   {"n", "acknowledged", "failed", "in_flight", "secs", "per_sec"}
//
//   node bench/accept.mjs --socket var/herald/herald.sock [--n 100000] [--in-flight 1024]
//
// Timed from the first send handed to the client to the last acknowledgement. Needs the
// package built (npm run build). Run it against a daemon whose provider does not deliver
// (herald-bench pauses its mock) to measure the accept path alone.

import { parseArgs } from "node:util";

import { Herald } from "../dist/index.js";

const { values } = parseArgs({
  options: {
    socket: { type: "string" },
    n: { type: "string", default: "100000" },
    "in-flight": { type: "string", default: "1024" },
  },
});
const n = Number(values.n);
const inFlight = Number(values["in-flight"]);
if (!Number.isSafeInteger(n) || n < 1 || !Number.isSafeInteger(inFlight) || inFlight < 1) {
  console.error("--n and --in-flight must be positive integers");
  process.exit(2);
}

/** The bench's message i (as herald-bench's `load::message`). */
function message(i) {
  const padded = String(i).padStart(7, "0");
  return {
    to: `guest${padded}@example.com`,
    content: {
      email: {
        from: "Ann & Bob <rsvp@wedding.example>",
        subject: "You're invited: Ann & Bob, June 14",
        text:
          `Dear guest ${i}, we would love to celebrate with you on June 14 at the Old ` +
          "Mill, 4 pm. Dinner and dancing follow. Please reply YES or NO by May 1, and " +
          "tell us about any dietary needs. Love, Ann & Bob",
      },
    },
    tags: ["bench", "invite"],
  };
}

const herald = await Herald.connect({ socket: values.socket, maxInFlight: inFlight });
let next = 0;
let acknowledged = 0;
let failed = 0;
let firstError = null;
let last = 0;
const started = process.hrtime.bigint();
async function worker() {
  for (;;) {
    const i = next++;
    if (i >= n) return;
    try {
      await herald.send(message(i));
      acknowledged++;
      last = process.hrtime.bigint();
    } catch (e) {
      failed++;
      firstError ??= String(e);
    }
  }
}
await Promise.all(Array.from({ length: Math.min(inFlight, n) }, worker));
const secs = Number((last > started ? last : process.hrtime.bigint()) - started) / 1e9;
await herald.close();
console.log(
  JSON.stringify({
    n,
    acknowledged,
    failed,
    first_error: firstError,
    in_flight: inFlight,
    secs,
    per_sec: secs > 0 ? acknowledged / secs : 0,
  }),
);
if (failed > 0) process.exit(1);
