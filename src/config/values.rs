//! Checks for the kinds of value several keys share: durations, URLs,
//! dates, permission bits, users and groups. Each reports its problem at the value's place and returns what
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

/// An address and port (`key` of `file`), or an error that shows `example`.
pub(super) fn address(
    d: &mut Diagnostics,
    file: usize,
    v: &Spanned<String>,
    key: &str,
    example: &str,
) -> Option<std::net::SocketAddr> {
    match v.get_ref().parse() {
        Ok(a) => Some(a),
        Err(e) => {
            d.error(
                &At::of(file, v),
                format!("`{key}` is not an address and port: {e}"),
                Some(format!("write it as {example}")),
            );
            None
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
        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
            d.error(
                &at,
                format!("`{key}` carries a user name or password: {}", crate::text::url(&u)),
                Some("remove the `user:password@` part: the client authenticates with client_secret, client_certificate or client_assertion, and a URL's credentials would be sent along and printed".to_string()),
            );
            None
        }
        Ok(u) if u.fragment().is_some() => {
            d.error(
                &at,
                format!("`{key}` has a fragment (`#…`): {}", crate::text::url(&u)),
                Some(
                    "remove everything from `#` on: a fragment is never sent to the server"
                        .to_string(),
                ),
            );
            None
        }
        Ok(u) if u.scheme() == "https" => Some(u),
        Ok(u) if u.scheme() == "http" && is_loopback(&u) => Some(u),
        Ok(u) => {
            let mut fixed = u.clone();
            let hint = match fixed.set_scheme("https") {
                Ok(()) => format!(
                    "use https ({}); plain http is only allowed to localhost",
                    crate::text::url(&fixed)
                ),
                Err(()) => "use an https URL".to_string(),
            };
            d.error(
                &at,
                format!("`{key}` must use https: {}", crate::text::url(&u)),
                Some(hint),
            );
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

/// An octal permission string such as "0640"; `example` shows the form.
pub(super) fn octal_mode(
    d: &mut Diagnostics,
    file: usize,
    m: &Spanned<String>,
    key: &str,
    example: &str,
) -> Option<u32> {
    match u32::from_str_radix(m.get_ref().trim_start_matches("0o"), 8) {
        Ok(v) if v <= 0o777 => Some(v),
        Ok(_) => {
            d.error(
                &At::of(file, m),
                format!("`{key}` is above 0777: setuid, setgid and sticky bits do not apply to it"),
                Some(format!(
                    "give the permission bits only, such as \"{example}\""
                )),
            );
            None
        }
        Err(_) => {
            d.error(
                &At::of(file, m),
                format!("`{key}` is not an octal permission"),
                Some(format!("write it as an octal string such as \"{example}\"")),
            );
            None
        }
    }
}

/// Which database [`account`] looks a name up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Account {
    User,
    Group,
}

/// A uid or gid, or a user or group name resolved now.
pub(super) fn account(
    d: &mut Diagnostics,
    file: usize,
    v: Spanned<toml::Value>,
    key: &str,
    kind: Account,
) -> Option<u32> {
    let at = At::of(file, &v);
    let (what, id, make) = match kind {
        Account::User => ("user", "uid", "useradd"),
        Account::Group => ("group", "gid", "groupadd"),
    };
    match v.into_inner() {
        toml::Value::Integer(n) => match u32::try_from(n) {
            Ok(x) => Some(x),
            Err(_) => {
                d.error(&at, format!("`{key}` {n} is not a valid {id}"), None);
                None
            }
        },
        toml::Value::String(s) => {
            if let Ok(x) = s.parse::<u32>() {
                return Some(x);
            }
            let found = match kind {
                Account::User => crate::acl::user_uid(&s),
                Account::Group => crate::acl::group_gid(&s),
            };
            match found {
                Ok(Some(x)) => Some(x),
                Ok(None) => {
                    d.error(
                        &at,
                        format!("unknown {what} `{s}`"),
                        Some(format!("create the {what} ({make}) or use a numeric {id}")),
                    );
                    None
                }
                Err(e) => {
                    d.error(
                        &at,
                        format!("cannot look up {what} `{s}`: {e}"),
                        Some(format!(
                            "check /etc/nsswitch.conf and the {what} database, or use a numeric {id}"
                        )),
                    );
                    None
                }
            }
        }
        _ => {
            d.error(&at, format!("`{key}` must be a {what} name or {id}"), None);
            None
        }
    }
}
