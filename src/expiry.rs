//! Credential expiry warnings: from 30 days before a source's
//! `credential_expires`, a WARN once a day until it is renewed.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Warnings start this long before expiry.
pub const WARN_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// And repeat this often.
pub const REPEAT: Duration = Duration::from_secs(86_400);

/// The warning for a credential expiring at `expires`, if it is due.
pub fn message(source: &str, expires: SystemTime, now: SystemTime) -> Option<String> {
    let date = crate::timefmt::rfc3339(expires);
    match expires.duration_since(now) {
        Err(_) => Some(format!(
            "the client credential of source {source} expired at {date}: create a new one and update the source"
        )),
        Ok(left) if left <= WARN_BEFORE => Some(format!(
            "the client credential of source {source} expires in {} days, at {date}: create a new one and update the source before then",
            left.as_secs() / 86_400
        )),
        Ok(_) => None,
    }
}

/// Remembers when each source was last warned about, so the log gets one
/// line a day per source.
#[derive(Debug, Default)]
pub struct ExpiryWarner {
    last: HashMap<(String, SystemTime), Instant>,
}

impl ExpiryWarner {
    /// Forgets sources that are gone, so the state does not grow with
    /// every source ever configured.
    pub fn retain<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) {
        let keep: std::collections::BTreeSet<&String> = names.into_iter().collect();
        self.last.retain(|(name, _), _| keep.contains(name));
    }

    /// The warnings due now for `(source, expiry)` pairs.
    pub fn due<'a>(
        &mut self,
        sources: impl IntoIterator<Item = (&'a str, SystemTime)>,
        now: SystemTime,
    ) -> Vec<String> {
        let mono = Instant::now();
        let mut out = Vec::new();
        for (name, expires) in sources {
            let Some(msg) = message(name, expires, now) else {
                continue;
            };
            let key = (name.to_string(), expires);
            if self
                .last
                .get(&key)
                .is_none_or(|at| mono.duration_since(*at) >= REPEAT)
            {
                self.last.insert(key, mono);
                out.push(msg);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn messages_start_thirty_days_before() {
        let now = SystemTime::UNIX_EPOCH + 1000 * DAY;
        assert!(message("g", now + 31 * DAY, now).is_none());
        assert!(message("g", now + 30 * DAY, now)
            .unwrap()
            .contains("expires in 30 days"));
        assert!(message("g", now + DAY / 2, now)
            .unwrap()
            .contains("expires in 0 days"));
        assert!(message("g", now - DAY, now).unwrap().contains("expired at"));
    }

    #[tokio::test(start_paused = true)]
    async fn once_a_day_per_source() {
        let now = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let soon = now + 10 * DAY;
        let mut w = ExpiryWarner::default();
        assert_eq!(w.due([("a", soon), ("b", now + 90 * DAY)], now).len(), 1);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(
            w.due([("a", soon)], now).is_empty(),
            "not again within the day"
        );
        tokio::time::advance(DAY).await;
        assert_eq!(w.due([("a", soon)], now).len(), 1);
        // A renewed credential (new expiry) is a new story.
        assert!(w.due([("a", soon + 20 * DAY)], now).len() == 1);
        // A removed source is forgotten.
        w.retain([&"b".to_string()]);
        assert!(w.last.is_empty());
    }
}
