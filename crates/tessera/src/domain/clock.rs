//! Time as a parameter: every expiry decision in the domain takes "now" from a [`Clock`], so tests
//! can move time forward instead of sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::{Serialize, Serializer};
use time::OffsetDateTime;

/// A point in time, in milliseconds since the Unix epoch (UTC).
///
/// Milliseconds because that is the precision of the JSON contract (API.md §5) and of the stores;
/// an integer so that it is `Copy`, cheap to compare and stored the same way in SQLite and Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Builds a timestamp from Unix milliseconds.
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// Unix milliseconds.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Whole Unix seconds (JWT `iat`/`exp` are seconds).
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// `self + d`, saturating instead of overflowing on absurd durations from config.
    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// `self - d`, saturating.
    pub fn minus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// The time from `self` until `later`, zero when `later` is not later.
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(later.0.saturating_sub(self.0)).unwrap_or(0))
    }

    /// RFC 3339, UTC, millisecond precision, `Z` suffix: the only time format of the JSON API.
    pub fn to_rfc3339(self) -> String {
        self.with_rfc3339(str::to_owned)
    }

    /// `f` of the text of [`Timestamp::to_rfc3339`], which is built on the stack when it can be.
    fn with_rfc3339<R>(self, f: impl FnOnce(&str) -> R) -> R {
        match self.rfc3339() {
            Some(text) => f(text.as_str()),
            None => f(&self.rfc3339_slow()),
        }
    }

    /// The text of [`Timestamp::to_rfc3339`] on the stack, for years 0 to 9999 (every time the
    /// service makes). Digits written in place: `format!` with its seven padded fields cost
    /// ~3.6k instructions per timestamp, two thirds of `GET /profile`'s JSON work
    /// (bench/NOTES.md).
    fn rfc3339(self) -> Option<Rfc3339> {
        let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000).ok()?;
        let year = u32::try_from(dt.year()).ok().filter(|y| *y <= 9999)?;
        let mut text = *b"0000-00-00T00:00:00.000Z";
        let fields = [
            (0..4, year),
            (5..7, u32::from(u8::from(dt.month()))),
            (8..10, u32::from(dt.day())),
            (11..13, u32::from(dt.hour())),
            (14..16, u32::from(dt.minute())),
            (17..19, u32::from(dt.second())),
            (20..23, u32::from(dt.millisecond())),
        ];
        for (at, mut n) in fields {
            for digit in text[at].iter_mut().rev() {
                *digit = b'0' + (n % 10) as u8;
                n /= 10;
            }
        }
        Some(Rfc3339(text))
    }

    /// [`Timestamp::to_rfc3339`] for the years [`Timestamp::rfc3339`] does not write (before
    /// year 0, after 9999, or beyond what `time` represents: the epoch).
    fn rfc3339_slow(self) -> String {
        let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.millisecond()
        )
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, ASCII.
struct Rfc3339([u8; 24]);

impl Rfc3339 {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_rfc3339(|text| f.write_str(text))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_rfc3339(|text| s.serialize_str(text))
    }
}

/// The source of "now" for the domain.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp(ms)
    }
}

/// A clock that only moves when told to; for tests of idle and absolute expiry.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A manual clock starting at the current wall-clock time (so JWT `iat` stays plausible).
    pub fn starting_now() -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(SystemClock.now().as_millis())))
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_has_millisecond_precision_and_z_suffix() {
        let t = Timestamp::from_millis(1_700_000_000_123);
        assert_eq!(t.to_rfc3339(), "2023-11-14T22:13:20.123Z");
    }

    /// The digits written in place agree with `format!` (the slow path, which every year
    /// outside 0..=9999 takes) across the range, at field boundaries and on leap days.
    #[test]
    fn rfc3339_in_place_agrees_with_format_across_the_years() {
        let day = 86_400_000_i64;
        let mut samples = vec![
            0,
            999,
            1_000,
            59_999,
            day - 1,
            951_782_400_000, // 2000-02-29
            1_700_000_000_123,
            253_402_300_799_999, // 9999-12-31T23:59:59.999
            -62_167_219_200_000, // 0000-01-01
        ];
        let mut t = -62_167_219_200_000_i64;
        while t < 253_402_300_799_999 {
            samples.push(t);
            t += 97 * day + 3_600_000 + 61_001;
        }
        for ms in samples {
            let t = Timestamp::from_millis(ms);
            let fast = t.rfc3339().map(|text| text.as_str().to_owned());
            assert_eq!(fast.as_deref(), Some(t.rfc3339_slow().as_str()), "{ms}");
            assert_eq!(t.to_string(), t.rfc3339_slow());
        }
        for ms in [-62_167_219_200_001, 253_402_300_800_000, i64::MIN, i64::MAX] {
            let t = Timestamp::from_millis(ms);
            assert!(t.rfc3339().is_none(), "{ms}");
            assert_eq!(t.to_rfc3339(), t.rfc3339_slow());
        }
        assert_eq!(
            serde_json::to_string(&Timestamp::from_millis(1_700_000_000_123)).ok(),
            Some("\"2023-11-14T22:13:20.123Z\"".to_owned())
        );
    }

    #[test]
    fn until_is_zero_for_the_past() {
        let t = Timestamp::from_millis(10_000);
        assert_eq!(t.until(Timestamp::from_millis(5_000)), Duration::ZERO);
        assert_eq!(
            t.until(Timestamp::from_millis(12_500)),
            Duration::from_millis(2_500)
        );
    }
}
