//! Checks for the kinds of value several keys share: durations, URLs and
//! dates. Each reports its problem at the value's place and returns what
//! the running code uses (or a default, so validation can go on).

use super::diag::{At, Diagnostics};
use std::time::{Duration, SystemTime};
use toml::Spanned;
use url::{Host, Url};

/// A humantime duration of at least `min`; `default` when unset or invalid.
pub(super) fn duration(
    d: &mut Diagnostics,
    file: usize,
    v: &Option<Spanned<String>>,
    key: &str,
    default: Duration,
    min: Duration,
) -> Duration {
    let Some(v) = v else { return default };
    match humantime::parse_duration(v.get_ref()) {
        Ok(x) if x >= min => x,
        Ok(_) => {
            d.error(
                &At::of(file, v),
                format!("`{key}` is too short"),
                Some(format!("use at least {}", humantime::format_duration(min))),
            );
            default
        }
        Err(e) => {
            d.error(
                &At::of(file, v),
                format!("`{key}` is not a duration: {e}"),
                Some("write it like \"30s\", \"5m\" or \"1h30m\"".to_string()),
            );
            default
        }
    }
}

/// An `https` URL, or `http` to a loopback host.
pub(super) fn url(d: &mut Diagnostics, file: usize, v: &Spanned<String>, key: &str) -> Option<Url> {
    let at = At::of(file, v);
    match Url::parse(v.get_ref()) {
        Err(e) => {
            d.error(
                &at,
                format!("`{key}` is not a URL: {e}"),
                Some("write a full URL such as https://sso.example.com/token".to_string()),
            );
            None
        }
        Ok(u) if u.scheme() == "https" => Some(u),
        Ok(u) if u.scheme() == "http" && is_loopback(&u) => Some(u),
        Ok(u) => {
            let mut fixed = u.clone();
            let hint = match fixed.set_scheme("https") {
                Ok(()) => format!("use https ({fixed}); plain http is only allowed to localhost"),
                Err(()) => "use an https URL".to_string(),
            };
            d.error(&at, format!("`{key}` must use https: {u}"), Some(hint));
            None
        }
    }
}

fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A TOML date or datetime, or the same as a string; a date means
/// midnight UTC.
pub(super) fn date(
    d: &mut Diagnostics,
    file: usize,
    v: Spanned<toml::Value>,
) -> Option<SystemTime> {
    let at = At::of(file, &v);
    let dt = match v.into_inner() {
        toml::Value::Datetime(d) => Some(d),
        toml::Value::String(s) => s.parse::<toml::value::Datetime>().ok(),
        _ => None,
    };
    let when = dt.and_then(|d| {
        let date = d.date?;
        let date = jiff::civil::Date::new(
            i16::try_from(date.year).ok()?,
            i8::try_from(date.month).ok()?,
            i8::try_from(date.day).ok()?,
        )
        .ok()?;
        let time = match d.time {
            Some(t) => jiff::civil::Time::new(
                i8::try_from(t.hour).ok()?,
                i8::try_from(t.minute).ok()?,
                i8::try_from(t.second.min(59)).ok()?,
                0,
            )
            .ok()?,
            None => jiff::civil::Time::midnight(),
        };
        let offset = match d.offset {
            Some(toml::value::Offset::Custom { minutes }) => {
                jiff::tz::Offset::from_seconds(i32::from(minutes) * 60).ok()?
            }
            _ => jiff::tz::Offset::UTC,
        };
        let ts = offset.to_timestamp(date.to_datetime(time)).ok()?;
        (ts >= jiff::Timestamp::UNIX_EPOCH)
            .then(|| SystemTime::try_from(ts).ok())
            .flatten()
    });
    if when.is_none() {
        d.error(
            &at,
            "`credential_expires` is not a date",
            Some("write it as 2027-05-01 or 2027-05-01T12:00:00Z".to_string()),
        );
    }
    when
}
