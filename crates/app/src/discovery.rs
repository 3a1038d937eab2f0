//! OpenID discovery documents, fetched through the provider port and kept for a while,
//! by issuer, in a bounded cache.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

use latchkey_domain::oauth::DiscoveredMetadata;

use crate::{AppError, Latchkey};

/// How long a discovery document is trusted before it is fetched again.
const DISCOVERY_TTL: Duration = Duration::hours(1);
/// How many issuers' discovery documents are kept at most. Issuers are chosen by
/// connection creators, so without a bound the cache would grow with every new one.
const DISCOVERY_CACHE_MAX: usize = 512;

/// Discovery documents by issuer, each for [`DISCOVERY_TTL`], at most `max` of them.
#[derive(Debug)]
pub(crate) struct DiscoveryCache {
    entries: Mutex<HashMap<String, (DateTime<Utc>, DiscoveredMetadata)>>,
    max: usize,
}

impl Default for DiscoveryCache {
    fn default() -> Self {
        Self::with_max(DISCOVERY_CACHE_MAX)
    }
}

impl DiscoveryCache {
    fn with_max(max: usize) -> Self {
        Self {
            entries: Mutex::default(),
            max: max.max(1),
        }
    }

    /// The document fetched less than [`DISCOVERY_TTL`] ago; a stale one is dropped.
    fn get(&self, issuer: &str, now: DateTime<Utc>) -> Option<DiscoveredMetadata> {
        let mut entries = self.entries.lock().ok()?;
        match entries.get(issuer) {
            Some((at, meta)) if now - *at < DISCOVERY_TTL => Some(meta.clone()),
            Some(_) => {
                entries.remove(issuer);
                None
            }
            None => None,
        }
    }

    /// Keeps `meta`, first dropping every stale entry and, when still full, the oldest.
    fn insert(&self, issuer: &str, now: DateTime<Utc>, meta: DiscoveredMetadata) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        entries.retain(|_, (at, _)| now - *at < DISCOVERY_TTL);
        while entries.len() >= self.max && !entries.contains_key(issuer) {
            let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            entries.remove(&oldest);
        }
        entries.insert(issuer.to_owned(), (now, meta));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

impl Latchkey {
    /// The discovery document of `issuer`, from the cache while it is fresh.
    pub(crate) async fn discovered(&self, issuer: &str) -> Result<DiscoveredMetadata, AppError> {
        let now = self.now();
        if let Some(meta) = self.discovery.get(issuer, now) {
            return Ok(meta);
        }
        let meta = self.svc.provider.discover(issuer.to_owned()).await?;
        self.discovery.insert(issuer, now, meta.clone());
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn meta(issuer: &str) -> DiscoveredMetadata {
        DiscoveredMetadata {
            issuer: issuer.to_owned(),
            ..Default::default()
        }
    }

    fn t(minutes: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or_default()
            + Duration::minutes(minutes)
    }

    #[test]
    fn the_discovery_cache_holds_at_most_its_cap_and_drops_the_oldest() {
        let cache = DiscoveryCache::with_max(3);
        for i in 0..10 {
            cache.insert(&format!("https://idp-{i}.example"), t(i), meta("x"));
            assert!(cache.len() <= 3, "after {i}: {}", cache.len());
        }
        assert_eq!(cache.len(), 3);
        for i in 0..7 {
            assert!(
                cache
                    .get(&format!("https://idp-{i}.example"), t(10))
                    .is_none(),
                "{i}"
            );
        }
        for i in 7..10 {
            assert!(
                cache
                    .get(&format!("https://idp-{i}.example"), t(10))
                    .is_some(),
                "{i}"
            );
        }
        // Refreshing a kept issuer evicts nothing.
        cache.insert("https://idp-9.example", t(11), meta("y"));
        assert_eq!(cache.len(), 3);
        assert_eq!(
            cache.get("https://idp-9.example", t(11)).unwrap().issuer,
            "y"
        );
        // The default cap is finite.
        assert_eq!(DiscoveryCache::default().max, DISCOVERY_CACHE_MAX);
    }

    #[test]
    fn the_discovery_cache_evicts_what_outlived_its_ttl() {
        let cache = DiscoveryCache::with_max(100);
        cache.insert("https://a.example", t(0), meta("a"));
        cache.insert("https://b.example", t(30), meta("b"));
        assert!(cache.get("https://a.example", t(59)).is_some());
        // Any insert drops every stale entry, not only the one asked for.
        cache.insert("https://c.example", t(61), meta("c"));
        assert_eq!(cache.len(), 2);
        assert!(cache.get("https://a.example", t(61)).is_none());
        // A stale entry that is asked for is dropped too.
        assert!(cache.get("https://b.example", t(91)).is_none());
        assert_eq!(cache.len(), 1);
        assert!(cache.get("https://c.example", t(91)).is_some());
    }
}
