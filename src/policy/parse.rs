//! TOML → validated [`Policy`], every error located at FILE:LINE:COL.
//! (Stub: being implemented.)

use super::Policy;
use crate::loc::Loc;
use std::fmt;
use std::path::Path;

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub loc: Loc,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.loc, self.message)
    }
}

/// All problems found in one policy file (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

pub fn load_policy(path: &Path) -> Result<Policy, PolicyErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        PolicyErrors(vec![PolicyError {
            loc: Loc {
                file: path.to_path_buf(),
                line: 1,
                col: 1,
            },
            message: format!("cannot read policy: {e}"),
        }])
    })?;
    parse_policy(path, &text)
}

pub fn parse_policy(path: &Path, _text: &str) -> Result<Policy, PolicyErrors> {
    Err(PolicyErrors(vec![PolicyError {
        loc: Loc {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
        },
        message: "not implemented".into(),
    }]))
}
