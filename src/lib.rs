//! tokend: a token broker daemon.
//!
//! Files become a validated [`config::Config`]; the [`broker::Broker`] turns a
//! config into running sources, one actor task each, that fetch and refresh
//! OAuth 2.0 client-credentials tokens through [`oauth`]; the [`server`] reads
//! what the sources publish and serves it over a Unix socket.
//! `docs/architecture.md` maps the layers (imports run only downward, as
//! `tests/layers.rs` checks), the flows and where each concept lives.
//!
//! Invariants that hold across modules:
//! - a served token always has at least 5 s of validity left, or is not served;
//! - at most one upstream request per source is in flight;
//! - no type that holds a token or a secret has a revealing `Debug`.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod acl;
pub mod answer;
pub mod broker;
pub mod cert;
pub mod check;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod cores;
pub mod credential;
pub mod daemon;
pub mod dev;
pub mod entra;
pub mod expiry;
pub mod files;
pub mod heap;
pub mod jwt;
pub mod logging;
pub mod metrics;
pub mod mi_env;
pub mod oauth;
pub mod peer;
pub mod problem;
pub mod reload;
pub mod secret;
pub mod server;
pub mod sink;
pub mod socket_dir;
pub mod sync;
pub mod systemd;
pub mod text;
pub mod timefmt;
pub mod token;
pub mod trust;
