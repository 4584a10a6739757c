// Sends that name a template stored in the daemon (`[templates] dir`): the daemon renders
// them, so the host passes only the template's name and its variables.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";

import { Herald, HeraldError } from "../src/index.js";
import { Daemon, eventually, MockProvider } from "./harness.js";

let mock: MockProvider;
let daemon: Daemon;
let herald: Herald;
let templates: string;

before(async () => {
  mock = await MockProvider.start();
  templates = mkdtempSync(path.join(os.tmpdir(), "herald-node-templates-"));
  writeFileSync(
    path.join(templates, "welcome.toml"),
    [
      'tags = ["welcome", "plan:{{ plan }}"]',
      "[email]",
      'subject = "Welcome, {{ user.name }}"',
      'text = "Hi {{ user.name }}, you are on {{ plan }} ({{ user.langs | join(\\",\\") }})."',
      "[sms]",
      'body = "Hi {{ user.name }}"',
      "",
    ].join("\n"),
  );
  daemon = await Daemon.start(mock, {
    retry: ["max_attempts = 1"],
    extra: ["[templates]", `dir = "${templates}"`],
  });
  herald = await Herald.connect({ socket: daemon.socket });
});

after(async () => {
  await herald?.close();
  await daemon?.stop();
  await mock?.stop();
  rmSync(templates, { recursive: true, force: true });
});

test("a send naming a template arrives rendered, with the template's tags", async () => {
  const ack = await herald.send(
    {
      to: "ann@example.com",
      channel: "email",
      template: "welcome",
      vars: { user: { name: "Ann", langs: ["en", "pl"] }, plan: "pro" },
      tags: ["t-node-template"],
    },
    { idempotencyKey: "node-template-1" },
  );
  const got = await eventually("the rendered message at the mock", async () =>
    mock.received.find((r) => r.id === ack.id),
  );
  const body = got as unknown as { subject: string; text: string; tags: string[] };
  assert.equal(body.subject, "Welcome, Ann");
  assert.equal(body.text, "Hi Ann, you are on pro (en,pl).");
  assert.deepEqual(body.tags, ["t-node-template", "welcome", "plan:pro"]);
  // The same key, template and vars again: the same message.
  const again = await herald.send(
    {
      to: "ann@example.com",
      channel: "email",
      template: "welcome",
      vars: { user: { name: "Ann", langs: ["en", "pl"] }, plan: "pro" },
      tags: ["t-node-template"],
    },
    { idempotencyKey: "node-template-1" },
  );
  assert.deepEqual(again, { id: ack.id, duplicate: true });
});

test("a missing variable and an unknown template are invalid_field naming them", async () => {
  await assert.rejects(
    herald.send({ to: "+14155550100", channel: "sms", template: "welcome", vars: {} }),
    (e: unknown) => e instanceof HeraldError && e.code === "invalid_field" && e.field === "vars.user.name",
  );
  await assert.rejects(
    herald.send({ to: "+14155550100", channel: "sms", template: "nope" }),
    (e: unknown) => e instanceof HeraldError && e.code === "invalid_field" && e.field === "template",
  );
});
