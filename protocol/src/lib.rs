//! `herald-protocol`: the Herald socket protocol — frame layout, the hello handshake,
//! requests, responses, errors, events and the codecs. The one definition the daemon (server
//! side), the Rust client, the CLI and the generated TypeScript types share;
//! `docs/protocol.md` is the prose version of this crate and must follow it.
//!
//! Owns: the wire contract. Must not: know about sockets beyond reading and writing frames,
//! storage, or the daemon's policies.
//!
//! A frame is a 4-byte big-endian length, then that many body bytes. The first client frame
//! is always JSON [`Hello`]; the server answers with a [`Welcome`] in the chosen codec and
//! every later frame uses that codec. Requests carry a client-chosen `id` that the
//! responses echo, so a client may pipeline; events of a subscription carry the id of the
//! `subscribe` request.
//!
//! Postcard is positional: no `flatten`, `untagged`, internally tagged enums or
//! `skip_serializing_if` here, and variants are only ever appended (golden-byte tests guard
//! the encoding).

#![forbid(unsafe_code)]

use std::fmt;

/// The domain types the frames carry. They are defined in `herald-plugin-api` (plugins see
/// the same messages and events) and are part of this protocol all the same.
pub use herald_plugin_api::{
    Attachment, Channel, Content, EmailContent, Event, EventKind, PushContent, PushPriority,
    SmsContent, State, UnixMillis,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version in `Hello.herald`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The socket path of the embedded default config (`etc/herald.toml`), relative to the
/// directory the daemon was started in. Clients fall back to it after an explicit path and
/// `HERALD_SOCKET`.
pub const DEFAULT_SOCKET: &str = "var/herald/herald.sock";

/// The default bound on a frame body (`daemon.max_frame`).
pub const DEFAULT_MAX_FRAME: u32 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    Json,
    Postcard,
}

/// The first frame a client sends, always JSON: `{"herald": 1, "codec": "json"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub herald: u32,
    pub codec: Codec,
}

/// The server's answer to [`Hello`], in the chosen codec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub herald: u32,
    /// The daemon's version.
    pub server: String,
    pub max_frame: u32,
}

/// A message to send, as a host application describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessage {
    /// Email address, E.164 phone number or device token, per the content's channel.
    pub to: String,
    pub content: Content,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Sends with the same key within the idempotency window are one message.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Deliver no earlier than this time.
    #[serde(default)]
    pub send_at: Option<UnixMillis>,
}

/// Which events a subscription receives. Empty lists match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub message_id: Option<String>,
    /// Matches events whose message carries any of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub kinds: Vec<EventKind>,
    #[serde(default)]
    pub channel: Option<Channel>,
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        self.message_id
            .as_ref()
            .is_none_or(|id| e.message_id.as_ref() == Some(id))
            && (self.tags.is_empty() || e.tags.iter().any(|t| self.tags.contains(t)))
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && self.channel.is_none_or(|c| e.channel == Some(c))
    }
}

/// A client request. Variant order is wire format: append only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Send(SendMessage),
    SendBatch(Vec<SendMessage>),
    Get {
        id: String,
    },
    Cancel {
        id: String,
    },
    /// Replays retained events with `seq >= from_seq` (all retained events for 0), then
    /// streams live ones. Without `from_seq`, only live events.
    Subscribe {
        #[serde(default)]
        filter: Filter,
        #[serde(default)]
        from_seq: Option<u64>,
    },
    /// Ends the subscription started by the request with this id.
    Unsubscribe {
        subscription: u64,
    },
    Stats,
    Reload,
    DeadList {
        #[serde(default)]
        limit: Option<u32>,
    },
    DeadRequeue {
        ids: Vec<String>,
    },
    /// Mints a stream token for `GET /v1/events` (an HS256 JWT signed with
    /// `realtime.token_secret`). Its bearer sees only events carrying one of `tags`, or of
    /// the messages `ids`, or everything with `admin`. `ttl_ms` defaults to one hour and may
    /// not exceed `realtime.max_token_ttl`.
    MintToken {
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        ids: Vec<String>,
        #[serde(default)]
        admin: bool,
        #[serde(default)]
        ttl_ms: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFrame {
    pub id: u64,
    pub request: Request,
}

/// Machine-readable error codes. Append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A field of the request is invalid; `field` names it.
    InvalidField,
    /// No route is configured for the message's channel.
    NoRoute,
    /// The message (or batch) exceeds a size limit.
    TooLarge,
    /// The idempotency key was used for a different message.
    IdempotencyConflict,
    /// The queue is at its configured depth; retry later.
    Busy,
    NotFound,
    /// The message is no longer queued (being sent, or finished).
    NotCancellable,
    /// The frame could not be decoded; the connection is closed.
    MalformedFrame,
    /// The frame's length exceeds `max_frame`; the connection is closed.
    FrameTooLarge,
    /// The hello asked for a protocol version this daemon does not speak.
    UnsupportedProtocol,
    /// The daemon is shutting down.
    ShuttingDown,
    /// A storage or internal failure; the request was not applied.
    Internal,
    /// `reload` found the config file invalid; the running config stays.
    ConfigRejected,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::NoRoute => "no_route",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::Busy => "busy",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotCancellable => "not_cancellable",
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnsupportedProtocol => "unsupported_protocol",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::ConfigRejected => "config_rejected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// The offending field, for `invalid_field`.
    #[serde(default)]
    pub field: Option<String>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn field(field: &str, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code: ErrorCode::InvalidField,
            message: message.into(),
            field: Some(field.to_string()),
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} ({field}): {}", self.code.as_str(), self.message),
            None => write!(f, "{}: {}", self.code.as_str(), self.message),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub id: String,
    /// True when the idempotency key matched an earlier send: no new message was made.
    pub duplicate: bool,
}

/// One entry of a `send_batch` answer, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchItem {
    Accepted(Accepted),
    Error(ErrorBody),
}

/// A message and its delivery state, as `get` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub id: String,
    pub channel: Channel,
    pub to: String,
    pub state: State,
    /// Delivery attempts started so far.
    pub attempt: u32,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// When the next attempt is due, while queued or deferred.
    #[serde(default)]
    pub due_at: Option<UnixMillis>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub provider_message_id: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    pub content: Content,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderStats {
    pub name: String,
    pub plugin: String,
    /// `closed`, `open` or `half_open`.
    pub breaker: String,
    pub accepted: u64,
    pub retries: u64,
    pub failures: u64,
    pub rejected: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Messages per state, in the order of [`State::ALL`] — `(state, count)`.
    pub states: Vec<(State, u64)>,
    /// Messages waiting or in flight (queued + deferred + sending).
    pub active: u64,
    pub max_queue: u64,
    pub last_seq: u64,
    pub connections: u64,
    pub uptime_ms: u64,
    pub providers: Vec<ProviderStats>,
}

/// A server frame body. Variant order is wire format: append only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Accepted(Accepted),
    BatchAccepted(Vec<BatchItem>),
    Message(MessageView),
    Cancelled {
        id: String,
    },
    /// Sent once when a subscription starts. `first_seq` is the oldest retained event,
    /// `last_seq` the newest at that moment. `epoch` identifies the event log: it changes
    /// only when the data directory is replaced, and then `seq` numbers start over, so a
    /// client that remembered a `seq` under another epoch must not resume from it.
    Subscribed {
        first_seq: u64,
        last_seq: u64,
        #[serde(default)]
        epoch: String,
    },
    Event(Event),
    Unsubscribed,
    Stats(Stats),
    Reloaded {
        detail: String,
    },
    DeadList(Vec<MessageView>),
    Requeued {
        count: u32,
    },
    Error(ErrorBody),
    /// A stream token (`mint_token`) and when it expires (Unix ms).
    Token {
        token: String,
        expires_at: UnixMillis,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerFrame {
    /// The id of the request this answers (the `subscribe` request's id for events; 0
    /// for connection-level errors).
    pub id: u64,
    pub response: Response,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u32, max: u32 },
    #[error("could not decode frame: {0}")]
    Decode(String),
    #[error("could not encode frame: {0}")]
    Encode(String),
    #[error("socket I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `value` with `codec` (no length prefix).
pub fn encode<T: Serialize>(codec: Codec, value: &T) -> Result<Vec<u8>, ProtocolError> {
    match codec {
        Codec::Json => serde_json::to_vec(value).map_err(|e| ProtocolError::Encode(e.to_string())),
        Codec::Postcard => {
            postcard::to_stdvec(value).map_err(|e| ProtocolError::Encode(e.to_string()))
        }
    }
}

pub fn decode<T: DeserializeOwned>(codec: Codec, body: &[u8]) -> Result<T, ProtocolError> {
    match codec {
        Codec::Json => {
            serde_json::from_slice(body).map_err(|e| ProtocolError::Decode(e.to_string()))
        }
        Codec::Postcard => {
            postcard::from_bytes(body).map_err(|e| ProtocolError::Decode(e.to_string()))
        }
    }
}

/// Appends one length-prefixed frame holding `value` to `out`.
pub fn encode_frame_into<T: Serialize>(
    codec: Codec,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    match codec {
        Codec::Json => serde_json::to_writer(&mut *out, value)
            .map_err(|e| ProtocolError::Encode(e.to_string()))?,
        Codec::Postcard => {
            let taken = std::mem::take(out);
            *out = postcard::to_extend(value, taken)
                .map_err(|e| ProtocolError::Encode(e.to_string()))?;
        }
    }
    let len = u32::try_from(out.len() - start - 4)
        .map_err(|_| ProtocolError::Encode("frame larger than 4 GiB".into()))?;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Reads one frame body. A length above `max` is reported without reading the body.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: u32,
    buf: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ProtocolError::Closed);
        }
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(ProtocolError::FrameTooLarge { len, max });
    }
    buf.clear();
    buf.resize(len as usize, 0);
    reader.read_exact(buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtocolError::Closed
        } else {
            e.into()
        }
    })?;
    Ok(())
}

/// Writes one frame holding `value` and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    codec: Codec,
    value: &T,
) -> Result<(), ProtocolError> {
    let mut out = Vec::new();
    encode_frame_into(codec, value, &mut out)?;
    writer.write_all(&out).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Golden bytes: an accidental reordering of a variant or field changes these.
    use super::*;
    use expect_test::expect;
    use herald_plugin_api::{EmailContent, SmsContent};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn sample_send() -> ClientFrame {
        ClientFrame {
            id: 7,
            request: Request::Send(SendMessage {
                to: "+14155550100".into(),
                content: Content::Sms(SmsContent {
                    from: None,
                    body: "RSVP?".into(),
                    media_urls: vec![],
                }),
                tags: vec!["rsvp".into()],
                idempotency_key: Some("k1".into()),
                send_at: None,
            }),
        }
    }

    #[test]
    fn postcard_golden_bytes() {
        expect!["07000c2b3134313535353530313030010005525356503f0001047273767001026b3100"]
            .assert_eq(&hex(&encode(Codec::Postcard, &sample_send()).unwrap()));
        let ev = ServerFrame {
            id: 3,
            response: Response::Event(Event {
                seq: 300,
                at: 1_700_000_000_000,
                message_id: Some("01J".into()),
                kind: EventKind::Delivered,
                channel: Some(Channel::Email),
                provider: Some("dev".into()),
                provider_message_id: None,
                attempt: Some(1),
                detail: None,
                tags: vec![],
                from: None,
                to: None,
                body: None,
            }),
        };
        expect!["0305ac0280d095ffbc31010330314a03010001036465760001010000000000"]
            .assert_eq(&hex(&encode(Codec::Postcard, &ev).unwrap()));
    }

    #[test]
    fn appended_variants_golden_bytes() {
        let mint = ClientFrame {
            id: 4,
            request: Request::MintToken {
                tags: vec!["wedding:42".into()],
                ids: vec![],
                admin: false,
                ttl_ms: Some(3_600_000),
            },
        };
        expect!["040a010a77656464696e673a343200000180dddb01"].assert_eq(&hex(&encode(
            Codec::Postcard,
            &mint,
        )
        .unwrap()));
        let token = ServerFrame {
            id: 4,
            response: Response::Token {
                token: "a.b.c".into(),
                expires_at: 1_700_000_000_000,
            },
        };
        expect!["040c05612e622e6380d095ffbc31"]
            .assert_eq(&hex(&encode(Codec::Postcard, &token).unwrap()));
        let subscribed = ServerFrame {
            id: 1,
            response: Response::Subscribed {
                first_seq: 1,
                last_seq: 9,
                epoch: "e1".into(),
            },
        };
        expect!["01040109026531"].assert_eq(&hex(&encode(Codec::Postcard, &subscribed).unwrap()));
        let f: ClientFrame = decode(
            Codec::Json,
            br#"{"id":1,"request":{"mint_token":{"tags":["wedding:42"],"ttl_ms":3600000}}}"#,
        )
        .unwrap();
        assert_eq!(f.request, mint.request);
        // An older daemon's subscribed frame (no epoch) still decodes.
        let old: ServerFrame = decode(
            Codec::Json,
            br#"{"id":1,"response":{"subscribed":{"first_seq":1,"last_seq":9}}}"#,
        )
        .unwrap();
        assert!(matches!(old.response, Response::Subscribed { epoch, .. } if epoch.is_empty()));
    }

    #[test]
    fn json_shapes() {
        expect![[r#"{"id":7,"request":{"send":{"to":"+14155550100","content":{"sms":{"from":null,"body":"RSVP?","media_urls":[]}},"tags":["rsvp"],"idempotency_key":"k1","send_at":null}}}"#]]
            .assert_eq(&String::from_utf8(encode(Codec::Json, &sample_send()).unwrap()).unwrap());
        // Optional fields may be omitted by hand-written JSON clients.
        let f: ClientFrame = decode(
            Codec::Json,
            br#"{"id":1,"request":{"send":{"to":"a@b.io","content":{"email":{"subject":"Hi","text":"x"}}}}}"#,
        )
        .unwrap();
        let Request::Send(s) = f.request else {
            panic!()
        };
        assert_eq!(
            s.content,
            Content::Email(EmailContent {
                subject: "Hi".into(),
                text: Some("x".into()),
                ..Default::default()
            })
        );
        let f: ClientFrame = decode(Codec::Json, br#"{"id":2,"request":"stats"}"#).unwrap();
        assert_eq!(f.request, Request::Stats);
        let f: ClientFrame = decode(
            Codec::Json,
            br#"{"id":3,"request":{"subscribe":{"from_seq":0}}}"#,
        )
        .unwrap();
        assert_eq!(
            f.request,
            Request::Subscribe {
                filter: Filter::default(),
                from_seq: Some(0)
            }
        );
    }

    #[tokio::test]
    async fn frames_round_trip_and_bound() {
        let mut out = Vec::new();
        encode_frame_into(Codec::Postcard, &sample_send(), &mut out).unwrap();
        encode_frame_into(Codec::Json, &sample_send(), &mut out).unwrap();
        let mut r = &out[..];
        let mut buf = Vec::new();
        read_frame(&mut r, 1024, &mut buf).await.unwrap();
        assert_eq!(
            decode::<ClientFrame>(Codec::Postcard, &buf).unwrap(),
            sample_send()
        );
        read_frame(&mut r, 1024, &mut buf).await.unwrap();
        assert_eq!(
            decode::<ClientFrame>(Codec::Json, &buf).unwrap(),
            sample_send()
        );
        assert!(matches!(
            read_frame(&mut r, 1024, &mut buf).await,
            Err(ProtocolError::Closed)
        ));
        let huge = (100u32 * 1024 * 1024).to_be_bytes();
        let mut r = &huge[..];
        assert!(matches!(
            read_frame(&mut r, 1024, &mut buf).await,
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }
}
