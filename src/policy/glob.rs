//! Name globs: `*` (any run of characters) and `?` (one character); nothing else is special.

use serde::{Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Glob {
    pattern: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Token {
    Lit(char),
    One,
    Many,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("empty pattern (use \"*\" to match anything)")]
    Empty,
    #[error("unsupported character {0:?} in pattern: only `*` and `?` are wildcards")]
    Unsupported(char),
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        let mut tokens = Vec::new();
        for c in pattern.chars() {
            match c {
                '*' => {
                    if tokens.last() != Some(&Token::Many) {
                        tokens.push(Token::Many)
                    }
                }
                '?' => tokens.push(Token::One),
                // Reserved so a later version can give them glob meaning without changing
                // what existing policies match.
                '[' | ']' | '{' | '}' | '\\' => return Err(GlobError::Unsupported(c)),
                c if c.is_control() => return Err(GlobError::Unsupported(c)),
                c => tokens.push(Token::Lit(c)),
            }
        }
        Ok(Glob {
            pattern: pattern.to_string(),
            tokens,
        })
    }

    pub fn any() -> Glob {
        Glob {
            pattern: "*".into(),
            tokens: vec![Token::Many],
        }
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    pub fn is_any(&self) -> bool {
        self.tokens == [Token::Many]
    }

    /// Iterative matcher with single-star backtracking: linear in practice, never exponential.
    pub fn matches(&self, text: &str) -> bool {
        let t: Vec<char> = text.chars().collect();
        let (mut ti, mut pi) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match self.tokens.get(pi) {
                Some(Token::Lit(c)) if *c == t[ti] => {
                    ti += 1;
                    pi += 1;
                }
                Some(Token::One) => {
                    ti += 1;
                    pi += 1;
                }
                Some(Token::Many) => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        self.tokens[pi..].iter().all(|t| *t == Token::Many)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

impl Serialize for Glob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Glob::new(p).unwrap().matches(t)
    }

    #[test]
    fn wildcards() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("api-*", "api-1"));
        assert!(m("api-*", "api-"));
        assert!(!m("api-*", "xapi-1"));
        assert!(m("postgres*", "postgres:16"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("*b*b*", "abxxbyy"));
        assert!(!m("*b*b*", "abxx"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exactly"));
        assert!(m("é?", "éé"));
    }

    #[test]
    fn rejects_bad_patterns() {
        assert_eq!(Glob::new(""), Err(GlobError::Empty));
        assert_eq!(Glob::new("a[b]"), Err(GlobError::Unsupported('[')));
        assert_eq!(Glob::new("a{b,c}"), Err(GlobError::Unsupported('{')));
    }

    #[test]
    fn no_exponential_blowup() {
        let p = Glob::new("*a*a*a*a*a*a*a*a*b").unwrap();
        assert!(!p.matches(&"a".repeat(5000)));
    }
}
