//! The run-time global deny list (`xdplb deny add|del|list`): kept in a
//! state file, one prefix per line, so a restarted daemon denies the same
//! sources. The daemon adds it to `[firewall] deny` from the config.

use std::{io::Write as _, path::Path};

use ipnet::Ipv4Net;

use crate::config::Prefix;

#[derive(Debug, thiserror::Error)]
pub enum DenyFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
}

/// The prefixes in `path`, in file order; none if the file does not exist.
/// Blank lines and `#` comments are skipped; anything else that is not a
/// prefix is an error naming the line.
pub fn load(path: &Path) -> Result<Vec<Ipv4Net>, DenyFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(DenyFileError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    parse(&text).map_err(|(line, reason)| DenyFileError::Line {
        path: path.display().to_string(),
        line,
        reason,
    })
}

/// The prefixes of a state file's text, or (line, reason).
pub fn parse(text: &str) -> Result<Vec<Ipv4Net>, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let p: Prefix = l.parse().map_err(|e| (i + 1, e))?;
        if !out.contains(&p.0) {
            out.push(p.0);
        }
    }
    Ok(out)
}

/// Write `list` to `path` whole: a temporary file renamed over it, so a
/// crash leaves the old list or the new one, never half of one.
pub fn save(path: &Path, list: &[Ipv4Net]) -> Result<(), DenyFileError> {
    let io = |source| DenyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    writeln!(
        f,
        "# xdplb run-time deny list (xdplb deny add|del); one prefix per line"
    )
    .map_err(io)?;
    for n in list {
        writeln!(f, "{n}").map_err(io)?;
    }
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_bad_lines_are_named() {
        let dir = std::env::temp_dir().join(format!("xdplb-deny-{}", std::process::id()));
        let path = dir.join("deny.list");
        assert!(load(&path).unwrap().is_empty(), "no file: empty list");
        let list: Vec<Ipv4Net> = vec![
            "198.51.100.0/24".parse().unwrap(),
            "10.1.2.3/32".parse().unwrap(),
        ];
        save(&path, &list).unwrap();
        assert_eq!(load(&path).unwrap(), list);
        assert_eq!(
            parse("# c\n\n10.0.0.0/8 # why\n10.0.0.0/8\n")
                .unwrap()
                .len(),
            1
        );
        let (line, reason) = parse("10.0.0.0/8\n10.0.0.1/8\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(reason.contains("did you mean 10.0.0.0/8"), "{reason}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
