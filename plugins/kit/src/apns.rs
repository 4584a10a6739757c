//! The APNs rules for a push, shared by the `apns` plugin and FCM's delivery to iOS (FCM
//! passes them on as APNs headers), so an iOS device gets the same push either way.
//!
//! - Anything the user sees or hears — an alert, a badge or a sound — is an `alert` push;
//!   data alone is a `background` push, which APNs requires at priority 5 with
//!   `content-available: 1`.
//! - `ttl_secs` becomes `apns-expiration`: 0 means "now or never", otherwise an absolute
//!   Unix time.

use herald_plugin_api::{PushContent, PushPriority, UnixMillis};

use crate::text::non_empty;

/// Whether APNs must treat `push` as an `alert` push (something the user sees or hears).
pub fn is_visible(push: &PushContent) -> bool {
    non_empty(&push.title).is_some()
        || non_empty(&push.body).is_some()
        || push.badge.is_some()
        || non_empty(&push.sound).is_some()
}

/// The `apns-push-type` of `push`.
pub fn push_type(push: &PushContent) -> &'static str {
    if is_visible(push) {
        "alert"
    } else {
        "background"
    }
}

/// The `apns-priority` of `push`: the one asked for on an alert push (`None` lets the
/// sender's default apply), always 5 on a background push.
pub fn priority(push: &PushContent) -> Option<&'static str> {
    if is_visible(push) {
        push.priority.map(|p| match p {
            PushPriority::High => "10",
            PushPriority::Normal => "5",
        })
    } else {
        Some("5")
    }
}

/// The `apns-expiration` of `push`, if it has a time to live.
pub fn expiration(push: &PushContent, now: UnixMillis) -> Option<u64> {
    push.ttl_secs.map(|ttl| {
        if ttl == 0 {
            0
        } else {
            now / 1000 + u64::from(ttl)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_user_notices_makes_an_alert_push() {
        let push = |f: fn(&mut PushContent)| {
            let mut p = PushContent::default();
            f(&mut p);
            p
        };
        let data_only = push(|p| {
            p.data.insert("k".into(), "v".into());
            p.priority = Some(PushPriority::High);
        });
        assert_eq!(push_type(&data_only), "background");
        assert_eq!(priority(&data_only), Some("5"), "background is always 5");
        for visible in [
            push(|p| p.title = Some("t".into())),
            push(|p| p.body = Some("b".into())),
            push(|p| p.badge = Some(3)),
            push(|p| p.sound = Some("ding".into())),
        ] {
            assert_eq!(push_type(&visible), "alert", "{visible:?}");
            assert_eq!(priority(&visible), None);
        }
        let empty_title = push(|p| p.title = Some(String::new()));
        assert_eq!(push_type(&empty_title), "background");
        let normal = push(|p| {
            p.badge = Some(1);
            p.priority = Some(PushPriority::Normal);
        });
        assert_eq!(priority(&normal), Some("5"));
    }

    #[test]
    fn expiration_is_absolute_or_zero() {
        let mut p = PushContent::default();
        assert_eq!(expiration(&p, 1_700_000_000_500), None);
        p.ttl_secs = Some(0);
        assert_eq!(expiration(&p, 1_700_000_000_500), Some(0));
        p.ttl_secs = Some(60);
        assert_eq!(expiration(&p, 1_700_000_000_500), Some(1_700_000_060));
    }
}
