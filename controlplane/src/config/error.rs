//! Config errors: every error names the file, the line and column, the field (as a path such as
//! `dispatcher[2].weight`, rows counted from 0 in file order) and the offending value, so an
//! operator can jump straight to it. Values that may hold an ESL password, and the reasons that
//! quote them, are redacted before they are stored, so no error can leak one.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A place in a config file. Lines and columns count from 1; columns count characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

/// One thing wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The TOML does not parse, or does not fit the expected shape (unknown key, wrong type).
    /// Only the first one is reported: after a syntax error the rest of the file means little.
    #[error("{at}: {}: {message}", field.as_deref().unwrap_or("(file)"))]
    Syntax {
        at: Position,
        field: Option<String>,
        message: String,
    },
    /// A required key is absent.
    #[error("{at}: {field}: missing: {reason}")]
    Missing {
        at: Position,
        field: String,
        reason: String,
    },
    /// A value that is well-typed but not acceptable.
    #[error("{at}: {field}: {value}: {reason}")]
    Invalid {
        at: Position,
        field: String,
        value: String,
        reason: String,
    },
    /// The same destination, id or listener appears twice where it must be unique.
    #[error("{at}: {field}: {value}: {reason} (first at line {first_line})")]
    Duplicate {
        at: Position,
        field: String,
        value: String,
        first_line: usize,
        reason: String,
    },
    /// A route (or row) names a set, group or resource that no row defines.
    #[error("{at}: {field}: {value}: {reason}")]
    UnknownReference {
        at: Position,
        field: String,
        value: String,
        reason: String,
    },
    /// Keys that cannot be combined, or a choice of which exactly one must be made.
    #[error("{at}: {field}: {reason}")]
    Conflict {
        at: Position,
        field: String,
        reason: String,
    },
}

impl ConfigError {
    /// Where the error is, if it is inside the file (a read error is not).
    pub fn position(&self) -> Option<&Position> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { at, .. }
            | ConfigError::Missing { at, .. }
            | ConfigError::Invalid { at, .. }
            | ConfigError::Duplicate { at, .. }
            | ConfigError::UnknownReference { at, .. }
            | ConfigError::Conflict { at, .. } => Some(at),
        }
    }

    /// The field path (`dispatcher[2].weight`), if the error has one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { field, .. } => field.as_deref(),
            ConfigError::Missing { field, .. }
            | ConfigError::Invalid { field, .. }
            | ConfigError::Duplicate { field, .. }
            | ConfigError::UnknownReference { field, .. }
            | ConfigError::Conflict { field, .. } => Some(field),
        }
    }

    pub fn line(&self) -> Option<usize> {
        self.position().map(|p| p.line)
    }
}

/// Every error found in one config file, in file order; `Display` prints one per line as
/// `PATH:LINE:COL: field: message`.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Byte offset -> line/column, computed once per file.
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// 1-based (line, column); the column counts characters, not bytes.
    pub(crate) fn locate(&self, text: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(text.len());
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        let column = text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        (line, column)
    }

    pub(crate) fn position(&self, path: &Path, text: &str, offset: usize) -> Position {
        let (line, column) = self.locate(text, offset);
        Position {
            path: path.to_path_buf(),
            line,
            column,
        }
    }
}

/// Replaces the password of every `fs://user:password@host` in `text` with `****`, so values and
/// serde messages can be echoed in errors without leaking an ESL password.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = find_ascii_ci(rest, "fs://") {
        let (head, tail) = rest.split_at(i + 5);
        out.push_str(head);
        // The URL ends at whitespace, a quote or the next URL (resource lists hold several);
        // its userinfo ends at its last '@'. Cutting too late only hides more, never less, so a
        // password holding whitespace (no '@' before it) runs on to the closing quote.
        let quoted = tail.find(['"', '\'', '`']).unwrap_or(tail.len());
        let end = tail[..quoted].find(char::is_whitespace).unwrap_or(quoted);
        let end = if tail[..end].contains('@') { end } else { quoted };
        let end = find_ascii_ci(&tail[..end], "fs://").unwrap_or(end);
        let url = &tail[..end];
        match url.rfind('@') {
            Some(at) => {
                let userinfo = &url[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":****");
                    }
                    None => out.push_str("****"),
                }
                out.push_str(&url[at..]);
            }
            None => out.push_str(url),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn find_ascii_ci(hay: &str, needle: &str) -> Option<usize> {
    hay.as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Best-effort field path for a TOML/serde error at `offset`: the table header in force there
/// (`[proxy]`, or `[[dispatcher]]` counted into `dispatcher[N]`) plus the key on the error's line.
/// Returns `None` rather than guess when the line is not a plain `key = value`.
pub(crate) fn field_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[line_start..line_end];

    let mut table: Option<String> = None;
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for l in text[..line_start].lines() {
        if let Some((name, array)) = header(l) {
            if array {
                let n = counts.entry(name).or_insert(0);
                table = Some(format!("{name}[{n}]"));
                *n += 1;
            } else {
                table = Some(name.to_string());
            }
        }
    }
    // The error may sit on a header itself (e.g. a missing key is reported at the table).
    if let Some((name, array)) = header(line) {
        return Some(if array {
            format!("{name}[{}]", counts.get(name).copied().unwrap_or(0))
        } else {
            name.to_string()
        });
    }
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| is_bare_key(k));
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k.to_string()),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

fn header(line: &str) -> Option<(&str, bool)> {
    let l = line.split('#').next()?.trim();
    if let Some(inner) = l.strip_prefix("[[").and_then(|s| s.strip_suffix("]]")) {
        let n = inner.trim();
        return is_bare_key(n).then_some((n, true));
    }
    let inner = l
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))?
        .trim();
    is_bare_key(inner).then_some((inner, false))
}

fn is_bare_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}
