// Generated from the Rust types of herald-protocol and herald-plugin-api by
// client/tests/typescript.rs. Do not edit; regenerate with
//   UPDATE_EXPECT=1 cargo test -p herald-client --test typescript
// The shapes are the JSON codec's (docs/protocol.md). Every integer is below 2^53.

/** The protocol version in `Hello.herald`. */
export const PROTOCOL_VERSION = 1;
/** The socket of the embedded default config, relative to the daemon's directory; clients fall back to it after an explicit path and `HERALD_SOCKET`. */
export const DEFAULT_SOCKET = "var/herald/herald.sock";
/** The default `daemon.max_frame`: the largest frame body the daemon accepts. */
export const DEFAULT_MAX_FRAME = 1048576;
/** 2^53 - 1: no integer in the protocol is larger. */
export const MAX_SAFE_INTEGER = 9007199254740991;

export type Accepted = { id: string, 
/**
 * True when the idempotency key matched an earlier send: no new message was made.
 */
duplicate: boolean, };

/**
 * A file attached to an email. `content` is standard base64 (padded).
 */
export type Attachment = { filename: string, content_type?: string | null, content: string, };

/**
 * One entry of a `send_batch` answer, in request order.
 */
export type BatchItem = { "accepted": Accepted } | { "error": ErrorBody };

/**
 * A delivery channel. Routes map a channel to an ordered list of provider instances.
 */
export type Channel = "email" | "sms" | "push";

export type ClientFrame = { 
/**
 * Chosen by the client, echoed on the answer: 1 to 2^53 − 1 ([`MAX_SAFE_INTEGER`]);
 * a larger id makes the frame malformed.
 */
id: number, request: Request, };

export type Codec = "json" | "postcard";

/**
 * The content of a message; the variant decides the channel.
 */
export type Content = { "email": EmailContent } | { "sms": SmsContent } | { "push": PushContent };

/**
 * Email content. `from` overrides the provider's configured sender.
 */
export type EmailContent = { from?: string | null, subject: string, text?: string | null, html?: string | null, reply_to?: string | null, headers?: { [key in string]: string }, attachments?: Array<Attachment>, };

export type ErrorBody = { code: ErrorCode, message: string, 
/**
 * The offending field, for `invalid_field`.
 */
field: string | null, };

/**
 * Machine-readable error codes. Append only.
 */
export type ErrorCode = "invalid_field" | "no_route" | "too_large" | "idempotency_conflict" | "busy" | "not_found" | "not_cancellable" | "malformed_frame" | "frame_too_large" | "unsupported_protocol" | "shutting_down" | "internal" | "config_rejected" | "storage_full" | "storage_unavailable";

/**
 * One entry of the durable event log. `seq` is strictly increasing and never reused.
 * `from`, `to`, `body` and `rsvp` are set on `inbound` events only.
 */
export type Event = { seq: number, at: number, message_id: string | null, kind: EventKind, channel: Channel | null, provider: string | null, provider_message_id: string | null, attempt: number | null, detail: string | null, tags: Array<string>, from: string | null, to: string | null, body: string | null, 
/**
 * On `inbound` events: the reply read as an RSVP (yes / no / maybe and a headcount),
 * when it reads as one; never a guess.
 */
rsvp: Rsvp | null, };

/**
 * What an event reports. The first twelve mirror [`State`]; append only.
 */
export type EventKind = "queued" | "sending" | "sent" | "delivered" | "bounced" | "complained" | "failed" | "deferred" | "dead" | "cancelled" | "expired" | "suppressed" | "opened" | "clicked" | "inbound" | "config_reloaded" | "config_rejected" | "storage_low" | "storage_ok" | "provider_opened" | "provider_half_open" | "provider_closed" | "delayed" | "provider_paused";

/**
 * Which events a subscription receives. Empty lists match everything.
 */
export type Filter = { message_id?: string | null, 
/**
 * Matches events whose message carries any of these tags.
 */
tags?: Array<string>, kinds?: Array<EventKind>, channel?: Channel | null, };

/**
 * The first frame a client sends, always JSON: `{"herald": 1, "codec": "json"}`.
 */
export type Hello = { herald: number, codec: Codec, };

/**
 * A message's priority lane. Among due messages, `critical` ones are dispatched first;
 * `normal` and `bulk` share what is left 3:1 (each takes all when the other has none), so
 * a bulk blast never starves normal traffic nor the reverse. Variant order is wire format
 * (and storage): append only.
 */
export type Lane = "critical" | "normal" | "bulk";

/**
 * The waiting messages (queued or deferred, due or not) of one priority lane.
 */
export type LaneStats = { lane: Lane, depth: number, 
/**
 * How long the longest-waiting due message of the lane has been due (ms); 0 when none
 * is due.
 */
oldest_age_ms: number, };

/**
 * A message and its delivery state, as `get` returns it.
 */
export type MessageView = { id: string, channel: Channel, to: string, state: State, 
/**
 * Delivery attempts started so far.
 */
attempt: number, created_at: number, updated_at: number, 
/**
 * When the next attempt is due, while queued or deferred.
 */
due_at: number | null, provider: string | null, provider_message_id: string | null, last_error: string | null, tags: Array<string>, idempotency_key: string | null, content: Content, 
/**
 * The message's priority lane.
 */
lane: Lane, };

export type ProviderStats = { name: string, plugin: string, 
/**
 * `closed`, `open` or `half_open`.
 */
breaker: string, accepted: number, retries: number, failures: number, rejected: number, 
/**
 * Until when (Unix ms) the provider is paused after it announced a provider-wide wait
 * (429 with `Retry-After`, a quota); `None` when it takes calls.
 */
paused_until: number | null, };

/**
 * Push notification content. A push with neither title nor body is a data-only
 * (background) push.
 */
export type PushContent = { title?: string | null, body?: string | null, 
/**
 * String-only key/value data delivered to the app.
 */
data?: { [key in string]: string }, badge?: number | null, sound?: string | null, 
/**
 * Replaces an earlier notification with the same id on the device.
 */
collapse_id?: string | null, priority?: PushPriority | null, 
/**
 * How long the push service may hold the notification for an offline device.
 */
ttl_secs?: number | null, };

/**
 * Push priority, mapped by each push provider to its own scale.
 */
export type PushPriority = "high" | "normal";

/**
 * A client request. Variant order is wire format: append only.
 */
export type Request = { "send": SendMessage } | { "send_batch": Array<SendMessage> } | { "get": { id: string, } } | { "cancel": { id: string, } } | { "subscribe": { filter?: Filter, from_seq?: number | null, } } | { "unsubscribe": { subscription: number, } } | "stats" | "reload" | { "dead_list": { limit?: number | null, } } | { "dead_requeue": { ids: Array<string>, } } | { "check_store": { dry_run: boolean, } } | { "mint_token": { tags: Array<string>, ids: Array<string>, admin: boolean, ttl_ms: number | null, } } | { "suppression_list": { after?: SuppressionCursor | null, limit?: number | null, } } | { "suppression_add": { channel: Channel, recipient: string, reason: string, } } | { "suppression_remove": { channel: Channel, recipient: string, } } | { "suppression_check": { channel: Channel, recipients: Array<string>, } };

/**
 * A server frame body. Variant order is wire format: append only.
 */
export type Response = { "accepted": Accepted } | { "batch_accepted": Array<BatchItem> } | { "message": MessageView } | { "cancelled": { id: string, } } | { "subscribed": { first_seq: number, last_seq: number, epoch: string, } } | { "event": Event } | "unsubscribed" | { "stats": Stats } | { "reloaded": { detail: string, } } | { "dead_list": Array<MessageView> } | { "requeued": { count: number, } } | { "error": ErrorBody } | { "store_checked": StoreCheck } | { "token": { token: string, expires_at: number, } } | { "suppression_list": { entries: Array<SuppressionEntry>, next: SuppressionCursor | null, } } | { "suppression_added": { entry: SuppressionEntry, added: boolean, } } | { "suppression_removed": { entry: SuppressionEntry | null, } } | { "suppression_checked": Array<SuppressionStatus> };

/**
 * A structured RSVP read from a reply: the answer, and how many people it counts when the
 * reply says so (`no` counts 0; a bare `yes` says nothing about the number).
 */
export type Rsvp = { answer: RsvpAnswer, headcount?: number | null, };

/**
 * A guest's answer to an invitation, read from a reply.
 */
export type RsvpAnswer = "yes" | "no" | "maybe";

/**
 * A message to send, as a host application describes it.
 */
export type SendMessage = { 
/**
 * Email address, E.164 phone number or device token, per the content's channel.
 */
to: string, content: Content, tags?: Array<string>, 
/**
 * Sends with the same key within the idempotency window are one message.
 */
idempotency_key?: string | null, 
/**
 * Deliver no earlier than this time.
 */
send_at?: number | null, 
/**
 * Send even if the recipient is on the suppression list: for transactional messages
 * the host must deliver anyway (a password reset, a receipt). The `queued` event of
 * such a message says the suppression was overridden.
 */
override_suppression?: boolean, 
/**
 * The priority lane (`critical`, `normal` — the default — or `bulk`): which due
 * messages the daemon takes first. Not the push `priority` of [`PushContent`].
 */
lane?: Lane, };

export type ServerFrame = { 
/**
 * The id of the request this answers (the `subscribe` request's id for events; 0
 * for connection-level errors).
 */
id: number, response: Response, };

/**
 * SMS (or MMS, with media) content. `from` overrides the provider's configured sender.
 */
export type SmsContent = { from?: string | null, body: string, media_urls?: Array<string>, };

/**
 * The delivery state of a message. Variant order is wire format: append only.
 */
export type State = "queued" | "sending" | "sent" | "delivered" | "bounced" | "complained" | "failed" | "deferred" | "dead" | "cancelled" | "expired" | "suppressed";

export type Stats = { 
/**
 * Messages per state, in the order of [`State::ALL`] — `(state, count)`.
 */
states: Array<[State, number]>, 
/**
 * Messages waiting or in flight (queued + deferred + sending).
 */
active: number, max_queue: number, last_seq: number, connections: number, uptime_ms: number, providers: Array<ProviderStats>, 
/**
 * Free space and the health of the store.
 */
storage: StorageStats, 
/**
 * Per priority lane, in the order of [`Lane::ALL`].
 */
lanes: Array<LaneStats>, };

/**
 * Whether the daemon can write, and why not. Variant order is wire format: append only.
 */
export type StorageState = "ok" | "low" | "critical" | "failed";

export type StorageStats = { state: StorageState, 
/**
 * Bytes available on the data directory's filesystem, at the last measurement.
 */
free_bytes: number, 
/**
 * `daemon.min_free` in bytes (0: no reserve). Below it, sends get `storage_full`.
 */
min_free_bytes: number, 
/**
 * Below this (half the reserve), deliveries pause too.
 */
critical_bytes: number, 
/**
 * Why the state is not `ok`, for people.
 */
detail: string | null, };

/**
 * What `check_store` found and repaired.
 */
export type StoreCheck = { 
/**
 * Messages examined.
 */
messages: number, 
/**
 * Empty when the store is consistent.
 */
problems: Array<StoreProblem>, 
/**
 * False for a dry run.
 */
repair: boolean, 
/**
 * Per-state counts as stored before the check, and as the messages say, in the order
 * of [`State::ALL`].
 */
counts_stored: Array<[State, number]>, counts_actual: Array<[State, number]>, 
/**
 * How long the check took, milliseconds.
 */
took_ms: number, };

/**
 * One kind of inconsistency found by `check_store`.
 */
export type StoreProblem = { kind: StoreProblemKind, 
/**
 * How many were found (for `counts_wrong`: how many states disagreed).
 */
found: number, 
/**
 * How many were repaired (fewer than found for a dry run, or past the per-pass bound:
 * run the check again).
 */
repaired: number, 
/**
 * What it means and what the repair does, in words.
 */
detail: string, 
/**
 * Some of the messages concerned (at most 10).
 */
examples: Array<string>, };

/**
 * A kind of inconsistency `check_store` looks for. Append only.
 */
export type StoreProblemKind = "sending_without_lease" | "not_scheduled" | "not_in_dead_letters" | "not_finished" | "stale_schedule" | "stale_lease" | "stale_dead_letter" | "counts_wrong";

/**
 * Where a page of the suppression list starts: after this (channel, key).
 */
export type SuppressionCursor = { channel: Channel, key: string, };

/**
 * One entry of the suppression list.
 */
export type SuppressionEntry = { channel: Channel, 
/**
 * The recipient as it was written when it was suppressed.
 */
recipient: string, 
/**
 * The recipient's canonical key: every spelling of one recipient has the same key,
 * and the list holds one entry per key.
 */
key: string, reason: string, source: SuppressionSource, 
/**
 * When it was suppressed (Unix ms; 0 for entries stored before this was recorded).
 */
at: number, };

/**
 * What put a recipient on the suppression list. Append only.
 */
export type SuppressionSource = "bounce" | "complaint" | "rejected" | "opt_out" | "provider" | "operator";

/**
 * One recipient of a `suppression_check`.
 */
export type SuppressionStatus = { 
/**
 * The recipient as the request wrote it.
 */
recipient: string, 
/**
 * Its canonical key.
 */
key: string, 
/**
 * Its entry, when it is on the list.
 */
entry: SuppressionEntry | null, };

/**
 * The server's answer to [`Hello`], in the chosen codec.
 */
export type Welcome = { herald: number, 
/**
 * The daemon's version.
 */
server: string, max_frame: number, };
