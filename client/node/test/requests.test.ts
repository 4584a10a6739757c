// Every request type against a real heraldd, through the public API.

import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { after, before, test } from "node:test";

import { Herald, HeraldError, type Event, type Subscription } from "../src/index.js";
import { Daemon, email, eventually, MockProvider, sms } from "./harness.js";

let mock: MockProvider;
let daemon: Daemon;
let herald: Herald;

before(async () => {
  mock = await MockProvider.start();
  // The stream-token secret comes from the environment, as in production.
  process.env["HERALD_TOKEN_SECRET"] = "node-client-tests-0123456789abcdef0123456789";
  daemon = await Daemon.start(mock, {
    retry: ["max_attempts = 1"],
    extra: ["[realtime]", 'token_secret = "${HERALD_TOKEN_SECRET}"', 'max_token_ttl = "2h"'],
  });
  herald = await Herald.connect({ socket: daemon.socket });
});

after(async () => {
  await herald?.close();
  await daemon?.stop();
  await mock?.stop();
});

async function until(sub: Subscription, done: (e: Event) => boolean): Promise<Event[]> {
  const seen: Event[] = [];
  for await (const e of sub) {
    seen.push(e);
    if (done(e)) break;
  }
  return seen;
}

test("the welcome states the protocol and the frame limit", () => {
  assert.equal(herald.welcome.herald, 1);
  assert.equal(herald.welcome.max_frame, 1048576);
  assert.equal(herald.socket, daemon.socket);
});

test("send, then follow the message's events and get it", async () => {
  const sub = await herald.subscribe({ tags: ["t-send"] });
  const ack = await herald.send({ ...email("ann@example.com"), tags: ["t-send", "rsvp"] });
  assert.match(ack.id, /^[0-9A-HJKMNP-TV-Z]{26}$/);
  assert.equal(ack.duplicate, false);
  const events = await until(sub, (e) => e.kind === "sent");
  assert.deepEqual(
    events.map((e) => [e.kind, e.message_id]),
    [
      ["queued", ack.id],
      ["sending", ack.id],
      ["sent", ack.id],
    ],
  );
  assert.deepEqual(events[2]?.tags, ["t-send", "rsvp"]);
  const m = await herald.get(ack.id);
  assert.equal(m.state, "sent");
  assert.equal(m.to, "ann@example.com");
  assert.equal(m.provider, "hook");
  assert.ok("email" in m.content && m.content.email.subject === "You're invited");
  assert.ok(mock.received.some((r) => r.id === ack.id));
});

test("an idempotent retry is a duplicate; a scheduled message can be cancelled", async () => {
  const sendAt = new Date(Date.now() + 3_600_000);
  const options = { idempotencyKey: "invite-42-bob", sendAt };
  const first = await herald.send(sms("+14155550100"), options);
  const again = await herald.send(sms("+14155550100"), options);
  assert.deepEqual(again, { id: first.id, duplicate: true });
  const m = await herald.get(first.id);
  assert.equal(m.state, "queued");
  assert.equal(m.due_at, sendAt.getTime());
  assert.equal(m.idempotency_key, "invite-42-bob");
  await herald.cancel(first.id);
  assert.equal((await herald.get(first.id)).state, "cancelled");
  await herald.cancel(first.id); // cancelling again succeeds
});

test("a push token goes in as the app got it, without a provider prefix", async () => {
  const token = "dK3x9QvTqE2mYz:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx";
  const push = { push: { title: "Tomorrow!", badge: 1, data: { wedding: "42" } } };
  const ack = await herald.send({ to: token, content: push });
  assert.equal((await herald.get(ack.id)).to, token);
  await assert.rejects(herald.send({ to: `fcm:${token}`, content: push }), (e: unknown) => {
    assert.ok(e instanceof HeraldError);
    assert.equal(e.code, "invalid_field");
    assert.equal(e.field, "to");
    assert.match(e.detail, /prefix/);
    return true;
  });
});

test("sendBatch answers item by item, in order", async () => {
  const items = await herald.sendBatch([
    email("ann@example.com", "Save the date"),
    email("not-an-address", "Save the date"),
    { ...sms("+14155550101", "Save the date"), idempotencyKey: "std-bo" },
  ]);
  assert.equal(items.length, 3);
  const [a, bad, c] = items;
  assert.ok(a !== undefined && !(a instanceof HeraldError) && a.duplicate === false);
  assert.ok(bad instanceof HeraldError);
  assert.equal(bad.code, "invalid_field");
  assert.equal(bad.field, "to");
  assert.ok(c !== undefined && !(c instanceof HeraldError));
  assert.equal((await herald.get(c.id)).idempotency_key, "std-bo");
});

test("stats counts every state and names the providers", async () => {
  const stats = await herald.stats();
  assert.equal(stats.states.length, 12);
  assert.deepEqual(stats.states[0]?.[0], "queued");
  assert.ok(stats.last_seq > 0);
  assert.ok(stats.connections >= 1);
  assert.deepEqual(
    stats.providers.map((p) => [p.name, p.plugin]),
    [["hook", "webhook"]],
  );
});

test("a lane is sent, kept on the message, and counted in stats", async () => {
  const sent = await herald.send(
    { to: "+14155550100", content: { sms: { body: "Your code is 123456" } } },
    { lane: "critical" },
  );
  assert.equal((await herald.get(sent.id)).lane, "critical");
  const [bulk] = await herald.sendBatch([
    { to: "+14155550100", content: { sms: { body: "Spring sale" } }, lane: "bulk" },
  ]);
  assert.ok(bulk !== undefined && !(bulk instanceof HeraldError));
  assert.equal((await herald.get(bulk.id)).lane, "bulk");
  const stats = await herald.stats();
  assert.deepEqual(
    stats.lanes.map((l) => l.lane),
    ["critical", "normal", "bulk"],
  );
});

test("a message whose attempts ran out is listed dead and can be requeued", async () => {
  mock.status = 503;
  try {
    const { id } = await herald.send(email("dead@example.com", "Doomed"));
    await eventually("the message to be dead", async () =>
      (await herald.get(id)).state === "dead" ? true : undefined,
    );
    const dead = await herald.deadList(10);
    assert.ok(dead.some((m) => m.id === id && m.state === "dead"));
    mock.status = 200;
    assert.equal(await herald.deadRequeue([id, "01JD3S0Q6G4Z8W2B5N7K9M1P3R"]), 1);
    await eventually("the requeued message to be sent", async () =>
      (await herald.get(id)).state === "sent" ? true : undefined,
    );
    assert.ok(!(await herald.deadList()).some((m) => m.id === id));
  } finally {
    mock.status = 200;
  }
});

test("mintToken returns a signed token scoped as asked, and refuses what the daemon refuses", async () => {
  const before = Date.now();
  const { token, expiresAt } = await herald.mintToken({ tags: ["wedding:42"], ttlMs: 3_600_000 });
  const [header, claims, signature] = token.split(".");
  assert.ok(header && claims && signature, token);
  const body = JSON.parse(Buffer.from(claims, "base64url").toString("utf8"));
  assert.deepEqual(body.tags, ["wedding:42"]);
  assert.equal(body.exp * 1000, expiresAt);
  assert.ok(expiresAt > before + 3_500_000 && expiresAt <= Date.now() + 3_600_000, `${expiresAt}`);
  await assert.rejects(herald.mintToken({ tags: ["wedding:42"], ttlMs: 3 * 3_600_000 }), (e: unknown) => {
    assert.ok(e instanceof HeraldError);
    assert.equal(e.code, "invalid_field");
    assert.equal(e.field, "ttl_ms");
    return true;
  });
  await assert.rejects(herald.mintToken({}), (e: unknown) => {
    assert.ok(e instanceof HeraldError);
    assert.equal(e.code, "invalid_field");
    return true;
  });
});

test("checkStore reports a consistent store, with or without repairs", async () => {
  await herald.send(email("check@example.com"));
  for (const dryRun of [true, false]) {
    const report = await herald.checkStore({ dryRun });
    assert.equal(report.repair, !dryRun);
    assert.ok(report.messages >= 1, JSON.stringify(report));
    assert.deepEqual(report.problems, []);
  }
});

test("the suppression list: add, check, list by pages, override on a send, remove", async () => {
  const { entry, added } = await herald.suppressionAdd("email", "Zed <ZED@Example.org>", "asked");
  assert.equal(added, true);
  assert.deepEqual(
    [entry.channel, entry.recipient, entry.key, entry.reason, entry.source],
    ["email", "Zed <ZED@Example.org>", "zed@example.org", "asked", "operator"],
  );
  const again = await herald.suppressionAdd("email", "zed@example.org", "twice");
  assert.deepEqual(again, { entry, added: false });
  await herald.suppressionAdd("email", "yan@example.org", "asked too");
  const [zed, other] = await herald.suppressionCheck("email", ["zed@EXAMPLE.org", "x@example.org"]);
  assert.deepEqual(zed?.entry, entry);
  assert.equal(other?.entry, null);
  assert.equal(other?.key, "x@example.org");
  const first = await herald.suppressionList({ limit: 1 });
  assert.equal(first.entries.length, 1);
  assert.ok(first.next !== null);
  const rest = await herald.suppressionList({ after: first.next, limit: 1000 });
  const keys = [...first.entries, ...rest.entries].map((e) => e.key);
  assert.ok(keys.includes("zed@example.org") && keys.includes("yan@example.org"), `${keys}`);
  assert.equal(rest.next, null);
  await assert.rejects(herald.suppressionAdd("sms", "0415", "x"), (e: unknown) => {
    assert.ok(e instanceof HeraldError);
    assert.equal(e.code, "invalid_field");
    assert.equal(e.field, "recipient");
    return true;
  });

  const blocked = await herald.send(email("zed@example.org"));
  await eventually("the send to be suppressed", async () =>
    (await herald.get(blocked.id)).state === "suppressed" ? true : undefined,
  );
  const forced = await herald.send(email("zed@example.org", "Your receipt"), {
    overrideSuppression: true,
  });
  await eventually("the overriding send to be sent", async () =>
    (await herald.get(forced.id)).state === "sent" ? true : undefined,
  );
  const [batched] = await herald.sendBatch([
    { ...email("yan@example.org", "Your receipt"), overrideSuppression: true },
  ]);
  assert.ok(batched !== undefined && !(batched instanceof HeraldError));
  await eventually("the overriding batch entry to be sent", async () =>
    (await herald.get(batched.id)).state === "sent" ? true : undefined,
  );

  assert.deepEqual(await herald.suppressionRemove("email", "ZED@example.org"), entry);
  assert.equal(await herald.suppressionRemove("email", "zed@example.org"), null);
  await herald.suppressionRemove("email", "yan@example.org");
  const back = await herald.send(email("zed@example.org", "Welcome back"));
  await eventually("the send after the removal to be sent", async () =>
    (await herald.get(back.id)).state === "sent" ? true : undefined,
  );
});

test("reload applies a valid config and refuses an invalid one", async () => {
  const detail = await herald.reload();
  assert.match(detail, /hook/);
  const good = readFileSync(daemon.configPath, "utf8");
  writeFileSync(daemon.configPath, good.replace('sms = ["hook"]', 'sms = ["nobody"]'));
  try {
    await assert.rejects(herald.reload(), (e: unknown) => {
      assert.ok(e instanceof HeraldError);
      assert.equal(e.code, "config_rejected");
      assert.match(e.message, /nobody/);
      return true;
    });
  } finally {
    writeFileSync(daemon.configPath, good);
  }
});

test("subscribe replays from a seq, filters, and unsubscribes when the loop ends", async () => {
  const { id } = await herald.send({ ...email("cy@example.com"), tags: ["t-replay"] });
  await eventually("the message to be sent", async () =>
    (await herald.get(id)).state === "sent" ? true : undefined,
  );
  const sub = await herald.subscribe({ message_id: id, kinds: ["queued", "sent"] }, { fromSeq: 0 });
  assert.ok(sub.firstSeq >= 1 && sub.lastSeq >= sub.firstSeq);
  const events = await until(sub, (e) => e.kind === "sent");
  assert.deepEqual(
    events.map((e) => e.kind),
    ["queued", "sent"],
  );
  assert.ok(events[0]!.seq < events[1]!.seq);
  // The loop's `break` closed the subscription: the iterator is done, nothing reconnects.
  assert.deepEqual(await sub.next(), { value: undefined, done: true });
  assert.equal(sub.reconnects, 0);
});
