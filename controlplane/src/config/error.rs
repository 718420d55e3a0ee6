//! Config errors as an operator reads them: `file:line: field: message`.
//!
//! Loading never stops at the first problem. Every check runs and every
//! failure is collected into [`ConfigErrors`], so one `meshward validate` run
//! shows everything that is wrong with a file instead of one error per edit.

use std::fmt;
use std::path::PathBuf;

/// What kind of problem a [`ConfigError`] is: a small fixed set, so the
/// reload metric can say why without putting error text in a label.
///
/// Ordered from the most to the least fundamental: a file that cannot be
/// read says nothing about its content, YAML that does not parse cannot be
/// validated, and so on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum ConfigErrorKind {
    /// A file or directory could not be read.
    Io,
    /// The mesh file is not YAML the loader can read (syntax, duplicate keys,
    /// an empty file).
    Parse,
    /// A field of the mesh file is missing or wrong.
    #[default]
    Validate,
    /// The policy bundle: a `.rego` or data file, or the decision rule.
    Policy,
}

impl ConfigErrorKind {
    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            ConfigErrorKind::Io => "io",
            ConfigErrorKind::Parse => "parse",
            ConfigErrorKind::Validate => "validate",
            ConfigErrorKind::Policy => "policy",
        }
    }
}

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
    /// What kind of problem it is (never shown in the message).
    pub kind: ConfigErrorKind,
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
            kind: ConfigErrorKind::default(),
        }
    }

    /// The same error, of `kind`.
    pub fn with_kind(mut self, kind: ConfigErrorKind) -> Self {
        self.kind = kind;
        self
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

    /// The most fundamental kind among the errors: one reason per
    /// rejected load.
    pub fn kind(&self) -> ConfigErrorKind {
        self.0.iter().map(|e| e.kind).min().unwrap_or_default()
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
    fn the_most_fundamental_kind_is_the_reason() {
        let validate = ConfigError::new("m.yaml", Some(1), "a", "x");
        let policy =
            ConfigError::new("p.rego", Some(2), "", "y").with_kind(ConfigErrorKind::Policy);
        let parse = ConfigError::new("m.yaml", Some(3), "", "z").with_kind(ConfigErrorKind::Parse);
        assert_eq!(
            ConfigErrors(vec![policy.clone(), validate.clone()]).kind(),
            ConfigErrorKind::Validate
        );
        assert_eq!(
            ConfigErrors(vec![validate, policy, parse]).kind().label(),
            "parse"
        );
        // The kind never changes what an operator reads.
        let io = ConfigError::new("m.yaml", None, "", "cannot read").with_kind(ConfigErrorKind::Io);
        assert_eq!(io.to_string(), "m.yaml: cannot read");
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
