//! Configuration errors: file, line (where known), key and reason.

use std::{
    fmt,
    path::{Path, PathBuf},
};

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {error}")]
    Read {
        file: PathBuf,
        /// Shown in the message and deliberately not a `#[source]`, so an
        /// error chain does not say it twice.
        error: std::io::Error,
    },
    #[error("{file}{line}: {key}: {reason}")]
    Invalid {
        file: PathBuf,
        /// ":LINE" when known, else empty.
        line: LineSuffix,
        key: String,
        reason: String,
    },
}

impl ConfigError {
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } => None,
        }
    }
}

#[derive(Debug, Default)]
pub struct LineSuffix(pub Option<usize>);

impl fmt::Display for LineSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, ":{n}"),
            None => Ok(()),
        }
    }
}

pub(super) fn from_toml(path: &Path, text: &str, key: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    ConfigError::Invalid {
        file: path.to_owned(),
        line: LineSuffix(line),
        key: if key.is_empty() || key == "." {
            "(document)".into()
        } else {
            key.into()
        },
        reason: e.message().trim().to_string(),
    }
}

/// Line of the key a validation error names (`service[0].backend[1].port`),
/// or of its nearest parent the document has.
pub(super) fn line_of(text: &str, key: &str) -> Option<usize> {
    use toml::de::DeTable;
    let doc = DeTable::parse(text).ok()?;
    let mut segments = key.split('.').map(|seg| match seg.split_once('[') {
        Some((name, rest)) => (name, rest),
        None => (seg, ""),
    });
    let (first, first_idx) = segments.next()?;
    let (_, mut at) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == first)?;
    at = descend_indexes(at, first_idx);
    for (name, indexes) in segments {
        let Some(next) = at.get_ref().get(name) else {
            break;
        };
        at = descend_indexes(next, indexes);
    }
    Some(
        text[..at.span().start.min(text.len())]
            .matches('\n')
            .count()
            + 1,
    )
}

/// Follow `[i][j]` array indexes from `at`, as far as they exist.
fn descend_indexes<'a, 'i>(
    mut at: &'a toml::Spanned<toml::de::DeValue<'i>>,
    indexes: &str,
) -> &'a toml::Spanned<toml::de::DeValue<'i>> {
    for i in indexes.split('[').filter(|x| !x.is_empty()) {
        let next = i
            .trim_end_matches(']')
            .parse::<usize>()
            .ok()
            .and_then(|n| at.get_ref().get(n));
        match next {
            Some(next) => at = next,
            None => break,
        }
    }
    at
}
