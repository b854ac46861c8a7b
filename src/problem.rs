//! What is wrong with a value, and how to fix it, before it has a place.
//!
//! The concept modules that check a value (secret references, `allow`,
//! certificates, Entra's rules) report a [`Problem`]; the config loader pins
//! it to the file, line and column the value came from.

/// A message and, if one helps, a hint: what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(message: impl Into<String>, hint: impl Into<Option<String>>) -> Problem {
        Problem {
            message: message.into(),
            hint: hint.into(),
        }
    }
}
