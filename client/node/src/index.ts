// @herald/client: the Node client of heraldd. Re-exports the public API and the protocol's
// generated types; nothing else is public.

export { Herald } from "./herald.js";
export type {
  BatchEntry,
  ConnectOptions,
  Message,
  SendOptions,
  TemplateMessage,
} from "./herald.js";
export { Subscription } from "./subscription.js";
export type { ReconnectOptions, SubscribeOptions } from "./subscription.js";
export { HeraldConnectionError, HeraldError, SubscriptionGapError } from "./errors.js";
export type { ConnectionErrorCode } from "./errors.js";
export { resolveSocket } from "./socket.js";
export {
  DEFAULT_MAX_FRAME,
  DEFAULT_SOCKET,
  MAX_SAFE_INTEGER,
  PROTOCOL_VERSION,
} from "./generated/protocol.js";
export type * from "./generated/protocol.js";
