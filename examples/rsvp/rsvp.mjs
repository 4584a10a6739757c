// @ts-check
// RSVP: invite a small guest list to a wedding by email and SMS through Herald, then print
// each invitation's delivery status and each guest's reply as they arrive.
//
//   node examples/rsvp/rsvp.mjs [--replies N]
//
// The socket is HERALD_SOCKET, else var/herald/herald.sock (run it from the directory
// heraldd runs in). Invitations carry idempotency keys, so running it again sends nothing
// twice: it reports the invitations it already sent and keeps listening. With --replies N it
// exits once every invitation has a final state and N replies have arrived; otherwise it
// listens until Ctrl-C.

import { parseArgs } from "node:util";

import { Herald, HeraldError } from "@herald/client";

const WEDDING = "wedding-42";
const GUESTS = [
  { id: "ann", name: "Ann Lee", to: "Ann Lee <ann@example.com>", channel: "email" },
  { id: "bo", name: "Bo Chen", to: "+14155550101", channel: "sms" },
  { id: "cy", name: "Cy Okafor", to: "cy.okafor@example.org", channel: "email" },
  { id: "dee", name: "Dee Park", to: "+14155550102", channel: "sms" },
];
/** States after which no more delivery news comes (replies still may). */
const FINAL = new Set(["delivered", "bounced", "complained", "failed", "dead", "cancelled", "expired", "suppressed"]);

const { values } = parseArgs({ options: { replies: { type: "string" } } });
const wantReplies = values.replies === undefined ? Infinity : Number(values.replies);

/** @param {(typeof GUESTS)[number]} guest @returns {import("@herald/client").Message} */
function invitation(guest) {
  const tags = ["rsvp", WEDDING, `guest-${guest.id}`];
  if (guest.channel === "sms") {
    return {
      to: guest.to,
      tags,
      content: { sms: { body: `Hi ${guest.name.split(" ")[0]}! Mia & Sam are getting married on 14 June. Reply YES or NO.` } },
    };
  }
  return {
    to: guest.to,
    tags,
    content: {
      email: {
        subject: "You're invited: Mia & Sam, 14 June",
        text: `Dear ${guest.name}, we are getting married on 14 June at the Old Mill. Will you come? Just reply to this email.`,
      },
    },
  };
}

const herald = await Herald.connect();
// Subscribe before sending, so that no event of these invitations can be missed.
const events = await herald.subscribe({ tags: [WEDDING] });

/** Invitation id → guest. */
const invited = new Map();
/** Invitation ids with a final delivery state. */
const settled = new Set();
let replies = 0;

console.log(`Inviting ${GUESTS.length} guests to ${WEDDING} (socket ${herald.socket})`);
for (const guest of GUESTS) {
  try {
    const { id, duplicate } = await herald.send(invitation(guest), { idempotencyKey: `${WEDDING}-${guest.id}` });
    invited.set(id, guest);
    if (duplicate) {
      const { state } = await herald.get(id);
      console.log(`${id}  ${guest.name.padEnd(10)} already invited earlier: ${state}`);
      if (FINAL.has(state)) settled.add(id);
    } else {
      console.log(`${id}  ${guest.name.padEnd(10)} invited by ${guest.channel}: ${guest.to}`);
    }
  } catch (e) {
    if (!(e instanceof HeraldError)) throw e;
    console.log(`could not invite ${guest.name}: ${e.code}${e.field ? ` (${e.field})` : ""}: ${e.detail}`);
  }
}

function done() {
  return settled.size === invited.size && replies >= wantReplies;
}

function announceSettled() {
  if (settled.size === invited.size) {
    const wait = wantReplies === Infinity ? "waiting for replies (Ctrl-C to stop)" : `${replies} of ${wantReplies} replies so far`;
    console.log(`All ${invited.size} invitations have a final delivery state; ${wait}.`);
  }
}

announceSettled();
if (!done()) {
  for await (const e of events) {
    const guest = e.message_id === null ? undefined : invited.get(e.message_id);
    if (e.kind === "inbound") {
      replies++;
      const from = guest !== undefined && e.from === guest.to ? `${guest.name} (${e.from})` : e.from;
      console.log(`REPLY from ${from} to invitation ${e.message_id} [${e.tags.join(", ")}]: ${JSON.stringify(e.body)}`);
    } else if (guest !== undefined && e.message_id !== null) {
      const via = e.provider === null ? "" : ` via ${e.provider}`;
      const why = e.detail === null ? "" : ` — ${e.detail}`;
      console.log(`${e.message_id}  ${guest.name.padEnd(10)} ${e.kind}${via}${why}`);
      if (FINAL.has(e.kind) && !settled.has(e.message_id)) {
        settled.add(e.message_id);
        announceSettled();
      }
    }
    if (done()) break;
  }
}
await herald.close();
