//! Config errors as an operator reads them: `file:line: field: message`.
//!
//! Loading never stops at the first problem. Every check runs and every
//! failure is collected into [`ConfigErrors`], so one `meshward validate` run
//! shows everything that is wrong with a file instead of one error per edit.

use std::fmt;
use std::path::PathBuf;

/// One problem in the mesh file or in the policy bundle it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file at fault: the mesh file, or a `.rego` / data file of the bundle.
    pub file: PathBuf,
    /// 1-based line in `file`, when the problem has a place.
    pub line: Option<usize>,
    /// Path of the field in the mesh file, e.g. `services[2].spiffe_id`.
    /// Empty for problems inside a bundle file (the file and line say where).
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(
        file: impl Into<PathBuf>,
        line: Option<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            line,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one load, in file order (mesh file first, by line).
/// Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    fn from(error: ConfigError) -> Self {
        Self(vec![error])
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One error per line, so a CLI can print the whole thing as is.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_line_and_field() {
        let e = ConfigError::new(
            "mesh.yaml",
            Some(14),
            "services[2].spiffe_id",
            "must be a spiffe:// URI in trust domain example.org",
        );
        assert_eq!(
            e.to_string(),
            "mesh.yaml:14: services[2].spiffe_id: must be a spiffe:// URI in trust domain example.org"
        );
        let no_field = ConfigError::new("p/a.rego", Some(3), "", "unexpected token");
        assert_eq!(no_field.to_string(), "p/a.rego:3: unexpected token");
        let no_line = ConfigError::new("mesh.yaml", None, "", "cannot read file");
        assert_eq!(no_line.to_string(), "mesh.yaml: cannot read file");
    }

    #[test]
    fn errors_display_one_per_line() {
        let errors = ConfigErrors(vec![
            ConfigError::new("m.yaml", Some(1), "a", "x"),
            ConfigError::new("m.yaml", Some(2), "b", "y"),
        ]);
        assert_eq!(errors.to_string(), "m.yaml:1: a: x\nm.yaml:2: b: y");
    }
}
