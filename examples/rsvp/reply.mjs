// @ts-check
// Simulates a guest's SMS reply: signs a Twilio inbound-message webhook the way Twilio
// does (X-Twilio-Signature, HMAC-SHA1 with the Auth Token over the URL and the sorted
// parameters) and posts it to heraldd's webhook listener, as Twilio would when a guest
// texts back. heraldd must run with examples/rsvp/herald.toml, which configures a `twilio`
// provider for inbound replies only.
//
//   TWILIO_AUTH_TOKEN=dev-secret node examples/rsvp/reply.mjs +14155550101 "YES, two of us"
//
// HERALD_WEBHOOKS (default http://127.0.0.1:8025) is webhooks.public_url of that config.

import { createHmac, randomBytes } from "node:crypto";

const [from, body] = process.argv.slice(2);
const token = process.env["TWILIO_AUTH_TOKEN"];
if (from === undefined || body === undefined || !token) {
  console.error('usage: TWILIO_AUTH_TOKEN=... node reply.mjs <guest phone, E.164> "<reply text>"');
  process.exit(2);
}
const base = process.env["HERALD_WEBHOOKS"] ?? "http://127.0.0.1:8025";
const url = `${base}/webhooks/twilio`;
/** @type {Record<string, string>} */
const params = {
  MessageSid: `SM${randomBytes(16).toString("hex")}`,
  AccountSid: "AC00000000000000000000000000000000",
  From: from,
  To: "+15005550006",
  Body: body,
  NumMedia: "0",
  SmsStatus: "received",
  ApiVersion: "2010-04-01",
};
const signed = url + Object.keys(params).sort().map((k) => k + params[k]).join("");
const signature = createHmac("sha1", token).update(signed).digest("base64");
const response = await fetch(url, {
  method: "POST",
  headers: { "content-type": "application/x-www-form-urlencoded", "x-twilio-signature": signature },
  body: new URLSearchParams(params).toString(),
});
console.log(`${response.status} ${response.statusText}: ${(await response.text()).trim()}`);
if (!response.ok) process.exit(1);
