// Where the daemon's socket is. Owns: the lookup order the `herald` CLI also uses. Must not:
// open anything.

import { DEFAULT_SOCKET } from "./generated/protocol.js";

/**
 * The socket path: the explicit `socket` option, then the `HERALD_SOCKET` environment
 * variable, then `var/herald/herald.sock` (the embedded default config's socket, relative to
 * the current directory) — the same order as the `herald` CLI.
 */
export function resolveSocket(
  socket?: string,
  env: Readonly<Record<string, string | undefined>> = process.env,
): string {
  if (socket !== undefined && socket !== "") return socket;
  const fromEnv = env["HERALD_SOCKET"];
  if (fromEnv !== undefined && fromEnv !== "") return fromEnv;
  return DEFAULT_SOCKET;
}
