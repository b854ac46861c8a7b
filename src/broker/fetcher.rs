//! Getting one token for a source: the real [`TokenClient`], or a
//! scripted stand-in in the refresh-policy tests.

use crate::config::SourceConfig;
use crate::oauth::{FetchError, TokenClient};
use crate::token::Token;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Something that gets a token for a source: the real [`TokenClient`], or
/// a scripted stand-in in the refresh-policy tests.
pub trait Fetcher: Send + Sync + 'static {
    /// A future of one upstream token request; it must not borrow `self`.
    fn fetch(
        &self,
        source: Arc<SourceConfig>,
    ) -> Pin<Box<dyn Future<Output = Result<Token, FetchError>> + Send>>;

    /// A config was applied: anything looked up from the old one (a
    /// discovered token endpoint) is to be looked up again.
    fn reloaded(&self) {}
}

impl Fetcher for TokenClient {
    fn fetch(
        &self,
        source: Arc<SourceConfig>,
    ) -> Pin<Box<dyn Future<Output = Result<Token, FetchError>> + Send>> {
        let client = self.clone();
        Box::pin(async move { client.fetch(&source).await })
    }

    fn reloaded(&self) {
        self.forget_discovery();
    }
}
