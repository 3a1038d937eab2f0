//! Timestamps are stored as BIGINT unix milliseconds: portable between SQLite and
//! PostgreSQL and compared exactly. Sub-millisecond precision is dropped on write.

use chrono::{DateTime, Utc};
use latchkey_ports::StoreError;

/// Unix milliseconds of `t` (truncated toward the past).
pub fn to_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The instant of `ms` unix milliseconds; `Backend` when out of chrono's range (only
/// corrupt data can be).
pub fn from_millis(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Backend(format!("stored timestamp {ms} is out of range")))
}

pub fn opt_from_millis(ms: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    ms.map(from_millis).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let t = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        let ms = to_millis(t);
        assert_eq!(ms, 1_700_000_000_123);
        assert_eq!(
            from_millis(ms).unwrap(),
            DateTime::from_timestamp(1_700_000_000, 123_000_000).unwrap()
        );
        let before_epoch = DateTime::from_timestamp(-5, 500_000_000).unwrap();
        assert_eq!(from_millis(to_millis(before_epoch)).unwrap(), before_epoch);
        assert!(from_millis(i64::MAX).is_err());
        assert_eq!(opt_from_millis(None).unwrap(), None);
    }
}
