//! The per-connection answer backlog: the bytes of answers (responses and subscription
//! events) a connection has in preparation or queued that its client has not read yet,
//! bounded by `daemon.max_unread_bytes`.
//!
//! Before the connection's reader starts a request it reserves room for the answer — the
//! most that kind of request can answer ([`answer_bound`]): a frame for `get`,
//! `dead_list`, `stats` and `send_batch`, a small fixed amount for the rest. When the budget
//! is spent the reader simply waits, so the client's further requests stay in the socket
//! (backpressure, not an error) until it reads. Once encoded, a reservation shrinks to the
//! answer's real size and is released when the writer has handed the bytes to the socket.
//! Subscription events reserve their encoded size before they are queued, so a subscriber
//! that does not read stalls its own stream; the event log, not memory, is its buffer.
//!
//! The budget is a bound on what is *admitted*: an answer larger than its kind's estimate
//! (only a reload detail can be; error messages are clipped by [`clip_errors`]) is queued
//! whole rather than deadlocking a connection whose budget is held by answers that wait.
//!
//! Owns: the budget, the answer-size classes, the coalescing writer. Must not: decode
//! requests or decide answers (that is `ipc`).

use std::sync::Arc;

use herald_protocol::{
    self as protocol, BatchItem, Codec, ErrorBody, Request, Response, ServerFrame,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// What an answer of a small kind (`send`, `cancel`, `unsubscribe`, `dead_requeue`, `reload`,
/// `subscribe`'s first answer) is budgeted at before it exists. Their answers are an id,
/// a count, a short detail, or an error clipped to [`MAX_ERROR_MESSAGE`].
pub const SMALL_ANSWER: usize = 16 * 1024;
/// What every queued frame costs beyond its bytes (the queue entry, the allocation).
const FRAME_OVERHEAD: usize = 128;
/// The longest error message an answer carries; longer ones are clipped (a message may
/// quote the request, and a request may be a whole frame).
pub const MAX_ERROR_MESSAGE: usize = 2048;
/// Writes coalesce queued frames up to this many bytes.
const COALESCE: usize = 256 * 1024;

/// One connection's budget of unread answer bytes. Cheap to clone (shared by the reader,
/// the request tasks and the subscription forwarders of one connection).
#[derive(Debug, Clone)]
pub struct Backlog {
    permits: Arc<Semaphore>,
    limit: usize,
}

/// Bytes held in a [`Backlog`] until dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
}

/// An encoded frame on its way to the socket, with the room it holds.
#[derive(Debug)]
pub struct Outgoing {
    pub bytes: Vec<u8>,
    pub held: Reservation,
}

impl Backlog {
    /// A budget of `limit` bytes (at least one byte; at most what a semaphore counts).
    pub fn new(limit: usize) -> Backlog {
        let limit = limit.clamp(1, u32::MAX as usize);
        Backlog {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// The permits `bytes` of answer cost, never more than the whole budget (so one answer
    /// larger than the budget still gets through, alone).
    fn cost(&self, bytes: usize) -> u32 {
        bytes.saturating_add(FRAME_OVERHEAD).min(self.limit) as u32
    }

    /// Waits until `bytes` fit in the budget (first come, first served), then holds them.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let permit = Arc::clone(&self.permits)
            .acquire_many_owned(self.cost(bytes))
            .await
            .expect("the backlog's semaphore is never closed");
        Reservation { permit }
    }

    /// The bytes currently held by this connection's answers.
    pub fn held(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    /// Sizes `held` to an encoded answer of `bytes`: a surplus goes back to the budget at
    /// once; a shortfall is admitted without waiting (see the module comment).
    pub fn fit(&self, held: &mut Reservation, bytes: usize) {
        let want = self.cost(bytes) as usize;
        let have = held.permit.num_permits();
        if want < have {
            drop(held.permit.split(have - want));
        }
    }
}

/// The most an answer to `request` is budgeted at before it is computed.
pub fn answer_bound(request: &Request, max_frame: u32) -> usize {
    match request {
        Request::Send(_)
        | Request::Cancel { .. }
        | Request::Unsubscribe { .. }
        | Request::DeadRequeue { .. }
        | Request::Reload
        | Request::Subscribe { .. } => SMALL_ANSWER,
        // Answers that grow with stored data or with the request are bounded by a frame.
        _ => max_frame as usize,
    }
}

/// The longest `field` an error names (paths are short; this only guards the bound).
const MAX_ERROR_FIELD: usize = 512;

fn clip(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

fn clip_error(e: &mut ErrorBody) {
    clip(&mut e.message, MAX_ERROR_MESSAGE);
    if let Some(field) = &mut e.field {
        clip(field, MAX_ERROR_FIELD);
    }
}

/// Clips every error message in `response` to [`MAX_ERROR_MESSAGE`] bytes (and every
/// error's field to 512), so a small answer stays within [`SMALL_ANSWER`].
pub fn clip_errors(response: &mut Response) {
    match response {
        Response::Error(e) => clip_error(e),
        Response::BatchAccepted(items) => {
            for item in items {
                if let BatchItem::Error(e) = item {
                    clip_error(e);
                }
            }
        }
        _ => {}
    }
}

/// Encodes `frame` and queues it for the writer, holding `held` (resized to the frame)
/// until the bytes are written. False when the connection is gone.
pub async fn send_answer(
    out: &mpsc::Sender<Outgoing>,
    backlog: &Backlog,
    codec: Codec,
    mut frame: ServerFrame,
    mut held: Reservation,
) -> bool {
    clip_errors(&mut frame.response);
    let mut bytes = Vec::new();
    if let Err(e) = protocol::encode_frame_into(codec, &frame, &mut bytes) {
        tracing::error!(error = %e, "cannot encode a response frame");
        return true;
    }
    backlog.fit(&mut held, bytes.len());
    out.send(Outgoing { bytes, held }).await.is_ok()
}

/// Encodes `frame`, waits for room for it, and queues it (for frames that had nothing
/// reserved, such as subscription events). False when the connection is gone.
pub async fn send_reserving(
    out: &mpsc::Sender<Outgoing>,
    backlog: &Backlog,
    codec: Codec,
    frame: &ServerFrame,
) -> bool {
    let mut bytes = Vec::new();
    if let Err(e) = protocol::encode_frame_into(codec, frame, &mut bytes) {
        tracing::error!(error = %e, "cannot encode an event frame");
        return true;
    }
    let held = backlog.reserve(bytes.len()).await;
    out.send(Outgoing { bytes, held }).await.is_ok()
}

/// Writes queued frames to `wr`, coalescing small ones into few writes, and releases each
/// frame's room once its bytes are written. Ends when every sender is gone (then shuts the
/// socket's write side) or when a write fails.
pub async fn write_answers<W: AsyncWrite + Unpin>(mut wr: W, mut queue: mpsc::Receiver<Outgoing>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut held = Vec::new();
    while let Some(first) = queue.recv().await {
        if first.bytes.len() >= COALESCE {
            if wr.write_all(&first.bytes).await.is_err() {
                return;
            }
            continue;
        }
        batch.clear();
        batch.extend_from_slice(&first.bytes);
        held.push(first.held);
        while batch.len() < COALESCE {
            match queue.try_recv() {
                Ok(next) => {
                    batch.extend_from_slice(&next.bytes);
                    held.push(next.held);
                }
                Err(_) => break,
            }
        }
        if wr.write_all(&batch).await.is_err() {
            return;
        }
        held.clear();
        if batch.capacity() > 4 * COALESCE {
            batch = Vec::with_capacity(64 * 1024);
        }
    }
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::ErrorCode;
    use std::time::Duration;

    #[tokio::test]
    async fn reservations_wait_for_room_and_shrink_to_the_answer() {
        let b = Backlog::new(10_000);
        let mut first = b.reserve(8_000).await;
        assert_eq!(b.held(), 8_000 + FRAME_OVERHEAD);
        // No room for another 8 000: the second reservation waits...
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.reserve(8_000).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        // ...until the first answer turns out small.
        b.fit(&mut first, 100);
        let second = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("room freed")
            .unwrap();
        assert_eq!(b.held(), 100 + 8_000 + 2 * FRAME_OVERHEAD);
        drop((first, second));
        assert_eq!(b.held(), 0);
    }

    #[tokio::test]
    async fn an_answer_larger_than_the_budget_goes_alone() {
        let b = Backlog::new(1_000);
        let r = b.reserve(5_000).await;
        assert_eq!(b.held(), 1_000);
        drop(r);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn errors_are_clipped_at_a_char_boundary() {
        let mut r = Response::Error(ErrorBody::field(&"f".repeat(9_000), "é".repeat(5_000)));
        clip_errors(&mut r);
        let Response::Error(e) = r else { panic!() };
        assert!(e.message.len() <= MAX_ERROR_MESSAGE, "{}", e.message.len());
        assert!(e.message.ends_with('…'));
        assert!(e.field.unwrap().len() <= MAX_ERROR_FIELD);
        let mut batch = Response::BatchAccepted(vec![BatchItem::Error(ErrorBody::new(
            ErrorCode::InvalidField,
            "x".repeat(100_000),
        ))]);
        clip_errors(&mut batch);
        let Response::BatchAccepted(items) = batch else {
            panic!()
        };
        let BatchItem::Error(e) = &items[0] else {
            panic!()
        };
        assert!(e.message.len() <= MAX_ERROR_MESSAGE);
    }

    #[tokio::test]
    async fn the_writer_releases_room_only_once_written() {
        let b = Backlog::new(1 << 20);
        let (tx, rx) = mpsc::channel(16);
        // A pipe of 1 KiB whose reader does not read yet: then writes wait.
        let (client, server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(write_answers(server, rx));
        let frame = ServerFrame {
            id: 1,
            response: Response::Error(ErrorBody::new(ErrorCode::Internal, "y".repeat(1500))),
        };
        for _ in 0..4 {
            assert!(send_reserving(&tx, &b, Codec::Json, &frame).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(b.held() > 4 * 1500, "held while unread: {}", b.held());
        // The client reads everything: the room comes back.
        drop(tx);
        let mut all = Vec::new();
        let mut client = client;
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut all)
            .await
            .unwrap();
        writer.await.unwrap();
        assert_eq!(b.held(), 0);
        assert!(all.len() > 4 * 1500);
    }
}
