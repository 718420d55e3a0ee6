//! `mesh.yaml`: parsing, validation (errors name file, line and field), the
//! policy bundle loader and the watcher that keeps the last good model.
//!
//! [`load`] is the only way from a file to a [`Mesh`]: everything the control
//! plane serves went through the same checks, and a file with any error
//! yields no model at all (never a partly applied one). The pipeline is
//! `yaml` (text to a line-marked tree) → `validate` (tree to model values,
//! every field checked, all errors collected) → [`bundle`] (the Rego bundle
//! the file points to, compiled) → [`Mesh`].

pub mod bundle;
mod error;
pub mod metrics;
pub mod model;
mod validate;
pub mod watch;
mod yaml;

use std::fs;
use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrorKind, ConfigErrors};
pub use model::*;
pub use watch::{RejectedReload, ReloadStatus, watch, watch_with_status};

use bundle::BundleError;

/// Loads `path`, validates it, and loads and compiles the policy bundle it
/// names. On failure, returns every error found, mesh file errors first (by
/// line), then bundle file errors.
pub fn load(path: &Path) -> Result<Mesh, ConfigErrors> {
    attempt(path).result
}

/// [`load`] for text already in memory: `source` is the file the text came
/// from, named by every error, and the policy directory is resolved against
/// its parent. The file itself is not read. Exists so fuzzers and tests can
/// drive the whole pipeline without a mesh file on disk.
pub fn load_str(text: &str, source: &Path) -> Result<Mesh, ConfigErrors> {
    attempt_text(text, source).result
}

/// `meshward validate <file>`: exactly what the control plane would accept.
pub fn validate_file(path: impl AsRef<Path>) -> Result<Mesh, ConfigErrors> {
    load(path.as_ref())
}

/// One load, and the policy directory it looked at (known even when the load
/// failed, so the watcher can watch the directory the file now names).
pub(crate) struct Attempt {
    pub result: Result<Mesh, ConfigErrors>,
    pub policy_dir: Option<PathBuf>,
}

/// The directory relative paths in `path` are resolved against.
fn base_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

pub(crate) fn attempt(path: &Path) -> Attempt {
    match fs::read_to_string(path) {
        Ok(text) => attempt_text(&text, path),
        Err(e) => Attempt {
            result: Err(
                ConfigError::new(path, None, "", format!("cannot read mesh file: {e}"))
                    .with_kind(ConfigErrorKind::Io)
                    .into(),
            ),
            policy_dir: None,
        },
    }
}

/// Everything [`attempt`] does after reading the file.
fn attempt_text(text: &str, path: &Path) -> Attempt {
    let fail = |line: Option<usize>, message: String| Attempt {
        result: Err(ConfigError::new(path, line, "", message)
            .with_kind(ConfigErrorKind::Parse)
            .into()),
        policy_dir: None,
    };
    let doc = match yaml::parse(text) {
        Ok(doc) => doc,
        Err(issue) => return fail(Some(issue.line), format!("invalid YAML: {}", issue.message)),
    };
    let Some(root) = doc.root else {
        return fail(None, "the mesh file is empty".to_string());
    };

    let mut errors: Vec<ConfigError> = doc
        .issues
        .iter()
        .map(|i| {
            ConfigError::new(path, Some(i.line), "", i.message.clone())
                .with_kind(ConfigErrorKind::Parse)
        })
        .collect();
    let draft = validate::check(path, &root);
    errors.extend(draft.errors);

    let mut file_errors = Vec::new();
    let mut policy = None;
    let mut policy_dir = None;
    if let Some(section) = &draft.policy
        && let Some(dir) = &section.dir
    {
        let resolved = base_dir(path).join(dir);
        policy_dir = Some(resolved.clone());
        let dir_error = |message: String| {
            ConfigError::new(path, Some(section.dir_line), "policy.dir", message)
                .with_kind(ConfigErrorKind::Policy)
        };
        match fs::metadata(&resolved) {
            Err(e) => errors.push(
                dir_error(format!(
                    "policy directory {} cannot be read: {e}",
                    resolved.display()
                ))
                .with_kind(ConfigErrorKind::Io),
            ),
            Ok(m) if !m.is_dir() => errors.push(dir_error(format!(
                "{} is not a directory",
                resolved.display()
            ))),
            Ok(_) => {
                if let Some(decision) = &section.decision {
                    match bundle::load(&resolved, decision) {
                        Ok(bundle) => policy = Some(bundle),
                        Err(bundle_errors) => {
                            for e in bundle_errors {
                                match e {
                                    BundleError::File {
                                        file,
                                        line,
                                        message,
                                    } => file_errors.push(
                                        ConfigError::new(file, line, "", message)
                                            .with_kind(ConfigErrorKind::Policy),
                                    ),
                                    BundleError::Dir { message } => errors.push(dir_error(message)),
                                    BundleError::Decision { message } => errors.push(
                                        ConfigError::new(
                                            path,
                                            Some(section.decision_line),
                                            "policy.decision",
                                            message,
                                        )
                                        .with_kind(ConfigErrorKind::Policy),
                                    ),
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    errors.append(&mut file_errors);
    let result = match policy {
        Some(policy) if errors.is_empty() => Ok(Mesh {
            source: path.to_path_buf(),
            trust_domain: draft.trust_domain,
            listeners: draft.listeners,
            authorizers: draft.authorizers,
            tracing: draft.tracing,
            services: draft
                .services
                .into_iter()
                .map(|s| (s.spec.name.clone(), s))
                .collect(),
            agents: draft
                .agents
                .into_iter()
                .map(|a| (a.name.clone(), a))
                .collect(),
            policy,
        }),
        _ => {
            if errors.is_empty() {
                // Unreachable by construction (no bundle means an error was
                // recorded), but never hand out an empty error list.
                errors.push(
                    ConfigError::new(path, None, "policy", "policy bundle not loaded")
                        .with_kind(ConfigErrorKind::Policy),
                );
            }
            Err(ConfigErrors(errors))
        }
    };
    Attempt { result, policy_dir }
}

#[cfg(test)]
mod tests;
