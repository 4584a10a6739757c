// The test fixture: a real heraldd (built by cargo) in a scratch directory, with the webhook
// plugin posting to a mock provider on 127.0.0.1. The Rust test
// tests/tests/e2e/node_client.rs passes the binaries' paths in HERALD_TEST_HERALDD and
// HERALD_TEST_PLUGIN_DIR; run directly, the suites fall back to ../../target/debug.

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { Herald } from "../src/index.js";

const here = path.dirname(fileURLToPath(import.meta.url));
// build/test → client/node → repository root
const repo = path.resolve(here, "..", "..", "..", "..");

function binaries(): { heraldd: string; pluginDir: string } {
  const heraldd = process.env["HERALD_TEST_HERALDD"] ?? path.join(repo, "target", "debug", "heraldd");
  const pluginDir = process.env["HERALD_TEST_PLUGIN_DIR"] ?? path.dirname(heraldd);
  if (!existsSync(heraldd) || !existsSync(path.join(pluginDir, "libherald_webhook.so"))) {
    throw new Error(
      `no heraldd at ${heraldd} (or no libherald_webhook.so in ${pluginDir}): run these suites ` +
        "with `cargo test -p herald-tests --test e2e node_client`, or build with `cargo build` " +
        "and set HERALD_TEST_HERALDD / HERALD_TEST_PLUGIN_DIR",
    );
  }
  return { heraldd, pluginDir };
}

export interface Received {
  id: string;
  to: string;
  tags: string[];
}

/** A provider endpoint for the webhook plugin: records each POST, answers `status`. */
export class MockProvider {
  readonly received: Received[] = [];
  status = 200;
  private constructor(private readonly server: http.Server) {}

  static async start(): Promise<MockProvider> {
    let mock: MockProvider | undefined;
    const server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as Received;
        mock?.received.push(body);
        res.writeHead(mock?.status ?? 200, { "content-type": "application/json" });
        res.end("{}");
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    mock = new MockProvider(server);
    return mock;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

export interface DaemonOptions {
  /** Extra lines for `[daemon]`, e.g. `max_queue = 2`. */
  daemon?: string[];
  /** Lines for `[retry]` replacing the fast test defaults of the same key. */
  retry?: string[];
  /** `[routes]` body; default: every channel to the mock. */
  routes?: string;
  /** Raw TOML appended after `[routes]`, e.g. a `[realtime]` section. */
  extra?: string[];
}

/** A running heraldd in its own scratch directory. */
export class Daemon {
  private child: ChildProcess | null = null;
  readonly socket: string;
  readonly configPath: string;
  readonly logPath: string;

  private constructor(
    readonly dir: string,
    private readonly heraldd: string,
  ) {
    this.socket = path.join(dir, "herald.sock");
    this.configPath = path.join(dir, "herald.toml");
    this.logPath = path.join(dir, "heraldd.log");
  }

  static async start(mock: MockProvider, options: DaemonOptions = {}): Promise<Daemon> {
    const { heraldd, pluginDir } = binaries();
    const dir = mkdtempSync(path.join(os.tmpdir(), "herald-node-"));
    const d = new Daemon(dir, heraldd);
    d.writeConfig(mock, options, pluginDir);
    d.spawn();
    await d.ready();
    return d;
  }

  writeConfig(mock: MockProvider, options: DaemonOptions, pluginDir = binaries().pluginDir): void {
    const retry = new Map([
      ["base", '"50ms"'],
      ["cap", '"200ms"'],
      ["max_attempts", "3"],
      ["ttl", '"1h"'],
    ]);
    for (const line of options.retry ?? []) {
      const [key, value] = line.split("=").map((s) => s.trim());
      if (key !== undefined && value !== undefined) retry.set(key, value);
    }
    const routes = options.routes ?? 'email = ["hook"]\nsms = ["hook"]\npush = ["hook"]';
    writeFileSync(
      this.configPath,
      [
        "[daemon]",
        `data_dir = "${this.dir}/data"`,
        `socket = "${this.socket}"`,
        `plugin_dir = "${pluginDir}"`,
        'shutdown_grace = "2s"',
        ...(options.daemon ?? []),
        "",
        "[retry]",
        ...[...retry].map(([k, v]) => `${k} = ${v}`),
        "",
        "[[providers]]",
        'name = "hook"',
        'plugin = "webhook"',
        `url = "${mock.url}/notify"`,
        "",
        "[routes]",
        routes,
        "",
        ...(options.extra ?? []),
        "",
      ].join("\n"),
    );
  }

  private spawn(): void {
    const log = openSync(this.logPath, "a");
    this.child = spawn(this.heraldd, ["--config", this.configPath], {
      stdio: ["ignore", log, log],
      env: { ...process.env, HERALD_LOG: "info" },
    });
  }

  /** Waits until the daemon answers a client (or fails with its log). */
  async ready(): Promise<void> {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const child = this.child;
      if (child !== null && child.exitCode !== null) {
        throw new Error(`heraldd exited during start-up (${child.exitCode}):\n${this.log()}`);
      }
      try {
        const h = await Herald.connect({ socket: this.socket, handshakeTimeoutMs: 5_000 });
        await h.close();
        return;
      } catch (e) {
        if (Date.now() > deadline) {
          throw new Error(`heraldd did not become ready within a minute (${String(e)}):\n${this.log()}`);
        }
        await new Promise((r) => setTimeout(r, 25));
      }
    }
  }

  /** SIGKILL: no chance to flush or clean up. */
  async kill(): Promise<void> {
    const child = this.child;
    this.child = null;
    if (child === null || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;
  }

  /** Starts heraldd again on the same data dir and socket. */
  async restart(): Promise<void> {
    await this.kill();
    this.spawn();
    await this.ready();
  }

  log(): string {
    try {
      return readFileSync(this.logPath, "utf8");
    } catch {
      return "";
    }
  }

  async stop(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Polls `check` until it returns a value other than undefined (or fails after `ms`). */
export async function eventually<T>(
  what: string,
  check: () => Promise<T | undefined>,
  ms = 60_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export const email = (to: string, subject = "You're invited") => ({
  to,
  content: { email: { subject, text: `${subject}: Ann & Bo, 14 June` } },
});

export const sms = (to: string, body = "Reply YES to come") => ({
  to,
  content: { sms: { body } },
});
