//! proto3-JSON encoding helpers: base64 bytes, enums by name or number, int64
//! as string or number, and RFC 3339 timestamps.

use base64::Engine as _;
use serde::{de, Deserialize, Deserializer, Serializer};

/// `bytes` fields: standard base64 with padding out; standard or URL-safe,
/// padded or not, in.
pub mod b64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(Vec::new()),
            Some(s) => decode(&s).map_err(de::Error::custom),
        }
    }

    /// Decodes any of the base64 dialects proto3-JSON allows.
    pub fn decode(s: &str) -> Result<Vec<u8>, String> {
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
        let s = s.trim();
        let url = s.contains('-') || s.contains('_');
        let padded = s.ends_with('=');
        let engine = match (url, padded) {
            (false, true) => &STANDARD,
            (false, false) => &STANDARD_NO_PAD,
            (true, true) => &URL_SAFE,
            (true, false) => &URL_SAFE_NO_PAD,
        };
        engine.decode(s).map_err(|e| format!("invalid base64: {e}"))
    }
}

/// int64 fields: emitted as a JSON string (canonical proto3-JSON), accepted as
/// a string or a number.
pub mod i64_str {
    use super::*;

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(i64),
            F(f64),
            S(String),
        }
        match Option::<Either>::deserialize(d)? {
            None => Ok(0),
            Some(Either::N(n)) => Ok(n),
            Some(Either::F(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(f as i64),
            Some(Either::F(f)) => Err(de::Error::custom(format!("not an integer: {f}"))),
            Some(Either::S(s)) => s.trim().parse().map_err(de::Error::custom),
        }
    }
}

/// Defines a proto enum that serializes as its name and deserializes from its
/// name or its number.
#[macro_export]
macro_rules! proto_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $num:expr => $text:expr),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            #[default]
            $($(#[$vm])* $var),+
        }

        impl $name {
            /// The proto enum value name, as sent in JSON.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $text),+ }
            }
            /// The proto enum number.
            pub fn number(self) -> i32 {
                match self { $($name::$var => $num),+ }
            }
            /// Looks a value up by number.
            pub fn from_number(n: i64) -> Option<Self> {
                match n { $(x if x == $num => Some($name::$var),)+ _ => None }
            }
            /// Looks a value up by name.
            pub fn from_name(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$var),)+ _ => None }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = serde_json::Value::deserialize(d)?;
                let found = match &v {
                    serde_json::Value::Null => Some($name::default()),
                    serde_json::Value::String(s) => $name::from_name(s),
                    serde_json::Value::Number(n) => n.as_i64().and_then($name::from_number),
                    _ => None,
                };
                found.ok_or_else(|| serde::de::Error::custom(format!(
                    concat!("unknown ", stringify!($name), " value {}"), v)))
            }
        }
    };
}

/// Formats seconds and nanoseconds since the Unix epoch as RFC 3339 in UTC
/// (`2026-11-28T20:46:32.123456789Z`), the proto3-JSON Timestamp form.
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    if nanos == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{nanos:09}Z")
    }
}

/// Milliseconds since the epoch, displayed as RFC 3339 UTC with millisecond
/// precision (`2026-11-28T20:46:32.123Z`), without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub u64);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = (self.0 / 1000) as i64;
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60,
            self.0 % 1000
        )
    }
}

/// Days since 1970-01-01 to a (year, month, day) civil date (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_796_000_000, 0), "2026-11-30T00:53:20Z");
        assert_eq!(rfc3339(-1, 0), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn millis_display() {
        assert_eq!(Millis(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Millis(951_782_400_007).to_string(), "2000-02-29T00:00:00.007Z");
    }

    #[test]
    fn base64_dialects_decode() {
        assert_eq!(b64::decode("YWJj").unwrap(), b"abc");
        assert_eq!(b64::decode("YWI=").unwrap(), b"ab");
        assert_eq!(b64::decode("YWI").unwrap(), b"ab");
        assert_eq!(b64::decode("-_8").unwrap(), vec![0xfb, 0xff]);
        assert!(b64::decode("!!").is_err());
    }
}
