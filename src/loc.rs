//! Source locations for errors that point into a user's file.

use serde::Serialize;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// `FILE:LINE:COL`, 1-based, column counted in characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Loc {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

impl Loc {
    /// Location of byte `offset` in `text`.
    pub fn at(file: &Path, text: &str, offset: usize) -> Loc {
        let offset = offset.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = before
            .get(line_start..)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        Loc {
            file: file.to_path_buf(),
            line,
            col,
        }
    }

    /// Location of the start of `span`, or of the file's start when there is none.
    pub fn of_span(file: &Path, text: &str, span: Option<Range<usize>>) -> Loc {
        Loc::at(file, text, span.map(|s| s.start).unwrap_or(0))
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_line_and_column() {
        let text = "a = 1\nbé = 2\n";
        let f = Path::new("p.toml");
        assert_eq!(Loc::at(f, text, 0).to_string(), "p.toml:1:1");
        assert_eq!(Loc::at(f, text, 6).to_string(), "p.toml:2:1");
        // 'é' is two bytes but one column
        assert_eq!(Loc::at(f, text, 9).to_string(), "p.toml:2:3");
        assert_eq!(Loc::at(f, text, 999).to_string(), "p.toml:3:1");
    }
}
