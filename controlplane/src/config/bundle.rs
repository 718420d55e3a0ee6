//! The policy bundle: a directory of Rego modules and data documents, loaded
//! with OPA's bundle rules and compiled once here so a broken policy is
//! rejected at the control plane, before any dataplane sees it.
//!
//! - Every `*.rego` file under the directory, recursively, except Rego tests
//!   (`*_test.rego`), sorted by relative path so the revision is stable.
//! - Every `data.json` / `data.yaml` (`data.yml`) lands in the data document
//!   at the path of its directory: `x/y/data.json` becomes `data.x.y`.
//!   Objects from several files deep-merge; two files setting the same leaf
//!   is an error (OPA refuses such bundles too).
//! - Names starting with `.` are skipped. Besides editor swap files and
//!   `.git`, this is what makes a Kubernetes ConfigMap mount work: the kubelet
//!   keeps the real files in `..data/` and `..<timestamp>/` and links them
//!   from the top, so without the rule every module would load three times.
//! - Symlinks are followed (ConfigMaps are made of them), with a guard
//!   against directory cycles.
//!
//! The bundle must compile with `regorus` (the engine the dataplanes run)
//! and define the decision rule. Errors name the file and line regorus
//! reports.

use std::fs;
use std::path::{Path, PathBuf};

use meshward_contract::decision_cache::{self, CacheError};
use sha2::{Digest, Sha256};

use super::model::PolicyBundle;
use super::yaml;

/// Why a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// A problem inside (or reading) one file of the bundle.
    #[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    File {
        file: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// The bundle directory itself is missing or unreadable.
    #[error("{message}")]
    Dir { message: String },
    /// The bundle compiles but the decision rule is unusable.
    #[error("{message}")]
    Decision { message: String },
}

/// What a bundle file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Module,
    DataJson,
    DataYaml,
}

/// One file that belongs to the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    /// Relative to the bundle directory, `/`-separated.
    pub rel: String,
    pub path: PathBuf,
    pub kind: FileKind,
}

fn kind_of(name: &str) -> Option<FileKind> {
    match name {
        "data.json" => Some(FileKind::DataJson),
        "data.yaml" | "data.yml" => Some(FileKind::DataYaml),
        _ if name.ends_with(".rego") && !name.ends_with("_test.rego") => Some(FileKind::Module),
        _ => None,
    }
}

/// Symlinked directories nested deeper than this are not followed.
const MAX_DEPTH: usize = 32;

/// The files of the bundle under `dir`, sorted by relative path, plus any
/// directories that could not be read.
pub fn files(dir: &Path) -> (Vec<BundleFile>, Vec<BundleError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            errors.push(BundleError::Dir {
                message: format!("{} is not a directory", dir.display()),
            });
            return (out, errors);
        }
        Err(e) => {
            errors.push(BundleError::Dir {
                message: format!("cannot read policy directory {}: {e}", dir.display()),
            });
            return (out, errors);
        }
    }
    let mut ancestors = Vec::new();
    walk(dir, "", &mut ancestors, &mut out, &mut errors);
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    (out, errors)
}

fn walk(
    dir: &Path,
    rel: &str,
    ancestors: &mut Vec<PathBuf>,
    out: &mut Vec<BundleFile>,
    errors: &mut Vec<BundleError>,
) {
    let real = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if ancestors.contains(&real) || ancestors.len() > MAX_DEPTH {
        return; // a symlink cycle, or absurd nesting
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(BundleError::File {
                file: dir.to_path_buf(),
                line: None,
                message: format!("cannot read directory: {e}"),
            });
            return;
        }
    };
    ancestors.push(real);
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        // `metadata` follows symlinks; a dangling link is simply not a file.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, &child_rel, ancestors, out, errors);
        } else if meta.is_file()
            && let Some(kind) = kind_of(&name)
        {
            out.push(BundleFile {
                rel: child_rel,
                path,
                kind,
            });
        }
    }
    ancestors.pop();
}

/// Loads, merges and compiles the bundle under `dir`, checking that
/// `decision` is a rule it defines.
pub fn load(dir: &Path, decision: &str) -> Result<PolicyBundle, Vec<BundleError>> {
    let (files, mut errors) = files(dir);
    if errors.iter().any(|e| matches!(e, BundleError::Dir { .. })) {
        return Err(errors);
    }

    let mut modules = Vec::new();
    let mut data = serde_json::Value::Object(serde_json::Map::new());
    let mut mounts: Vec<(Vec<String>, String)> = Vec::new();
    for file in &files {
        let text = match fs::read_to_string(&file.path) {
            Ok(text) => text,
            Err(e) => {
                errors.push(file_error(&file.path, None, format!("cannot read: {e}")));
                continue;
            }
        };
        match file.kind {
            FileKind::Module => modules.push((file.rel.clone(), text)),
            FileKind::DataJson | FileKind::DataYaml => {
                let parsed = if file.kind == FileKind::DataJson {
                    serde_json::from_str::<serde_json::Value>(&text).map_err(|e| {
                        file_error(&file.path, Some(e.line()), format!("invalid JSON: {e}"))
                    })
                } else {
                    yaml_to_json(&file.path, &text)
                };
                match parsed {
                    Ok(value) => {
                        let mount = mount_path(&file.rel);
                        if let Err(message) =
                            mount_data(&mut data, &mount, value, &file.rel, &mounts)
                        {
                            errors.push(file_error(&file.path, None, message));
                        }
                        mounts.push((mount, file.rel.clone()));
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
    }

    let bundle = PolicyBundle {
        dir: dir.to_path_buf(),
        revision: revision(&modules, &data, decision),
        modules,
        data,
        decision: decision.to_string(),
    };
    if let Err(mut compile_errors) = compile(&bundle) {
        errors.append(&mut compile_errors);
    }
    if errors.is_empty()
        && let Err(e) = check_cache_declaration(&bundle)
    {
        errors.push(e);
    }
    if errors.is_empty() {
        Ok(bundle)
    } else {
        Err(errors)
    }
}

/// Checks the bundle's decision cache declaration as every dataplane will
/// before it ACKs, so a wrong one is refused here, naming the module and
/// line, instead of being NACKed by every dataplane.
fn check_cache_declaration(bundle: &PolicyBundle) -> Result<(), BundleError> {
    let modules: Vec<(&str, &str)> = bundle
        .modules
        .iter()
        .map(|(rel, source)| (rel.as_str(), source.as_str()))
        .collect();
    let Err(e) = decision_cache::declared(&bundle.data, &modules) else {
        return Ok(());
    };
    let text = e.to_string();
    Err(match &e {
        CacheError::Undeclared { module, line, .. } | CacheError::Impure { module, line, .. } => {
            let at = format!("{module}:{line}: ");
            file_error(
                &bundle.dir.join(module),
                Some(*line as usize),
                text.strip_prefix(&at).unwrap_or(&text).to_string(),
            )
        }
        CacheError::Scan { module, .. } => file_error(&bundle.dir.join(module), None, text),
        CacheError::NotAList | CacheError::Unsupported { .. } => BundleError::Dir {
            message: format!("policy bundle {}: {text}", bundle.dir.display()),
        },
    })
}

/// Compiles `bundle` into a regorus engine ready for evaluation of
/// `bundle.decision` (clone it per request). Syntax and semantic errors name
/// the module file and line.
pub fn compile(bundle: &PolicyBundle) -> Result<regorus::Engine, Vec<BundleError>> {
    let mut engine = regorus::Engine::new();
    let mut errors = Vec::new();
    for (rel, source) in &bundle.modules {
        if let Err(e) = engine.add_policy(rel.clone(), source.clone()) {
            errors.push(rego_error(bundle, &e.to_string()));
        }
    }
    let data = serde_json::to_string(&bundle.data)
        .map_err(|e| e.to_string())
        .and_then(|json| regorus::Value::from_json_str(&json).map_err(|e| e.to_string()))
        .and_then(|value| engine.add_data(value).map_err(|e| e.to_string()));
    if let Err(message) = data {
        errors.push(BundleError::Dir {
            message: format!("data documents rejected by the policy engine: {message}"),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if bundle.modules.is_empty() {
        return Err(vec![BundleError::Decision {
            message: format!(
                "no .rego modules in {}, so {} is undefined",
                bundle.dir.display(),
                bundle.decision
            ),
        }]);
    }
    let entrypoint: regorus::Rc<str> = bundle.decision.as_str().into();
    if let Err(e) = engine.compile_with_entrypoint(&entrypoint) {
        let message = e.to_string();
        let error = if message.contains("not a valid rule path") {
            let packages = engine.get_packages().unwrap_or_default().join(", ");
            BundleError::Decision {
                message: format!(
                    "rule {} is not defined by the policy bundle in {} (packages: {packages})",
                    bundle.decision,
                    bundle.dir.display()
                ),
            }
        } else {
            rego_error(bundle, &message)
        };
        return Err(vec![error]);
    }
    Ok(engine)
}

fn file_error(path: &Path, line: Option<usize>, message: String) -> BundleError {
    BundleError::File {
        file: path.to_path_buf(),
        line,
        message,
    }
}

/// Turns a regorus error into a file error. regorus formats positioned errors
/// as `\n--> <file>:<line>:<col>\n<source excerpt>\nerror: <message>`.
fn rego_error(bundle: &PolicyBundle, text: &str) -> BundleError {
    let location = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("--> "))
        .and_then(|loc| {
            let mut parts = loc.rsplitn(3, ':');
            let _col = parts.next()?;
            let line = parts.next()?.trim().parse::<usize>().ok()?;
            let file = parts.next()?;
            Some((file.to_string(), line))
        });
    let message = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or(text)
        .trim()
        .to_string();
    match location {
        Some((rel, line)) => file_error(&bundle.dir.join(rel), Some(line), message),
        None => BundleError::Dir {
            message: format!("policy bundle does not compile: {message}"),
        },
    }
}

/// `x/y/data.json` -> `["x", "y"]`.
fn mount_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    parts.pop();
    parts
}

/// Places `value` at `mount` inside `data`, deep-merging objects.
fn mount_data(
    data: &mut serde_json::Value,
    mount: &[String],
    value: serde_json::Value,
    rel: &str,
    mounts: &[(Vec<String>, String)],
) -> Result<(), String> {
    if mount.is_empty() && !value.is_object() {
        return Err("a data document at the bundle root must be a JSON object".into());
    }
    let mut wrapped = value;
    for key in mount.iter().rev() {
        let mut object = serde_json::Map::new();
        object.insert(key.clone(), wrapped);
        wrapped = serde_json::Value::Object(object);
    }
    let mut at = vec!["data".to_string()];
    merge(data, wrapped, &mut at).map_err(|conflict| {
        let other = mounts
            .iter()
            .filter(|(m, other)| other != rel && overlaps(m, mount))
            .map(|(_, other)| other.as_str())
            .next()
            .unwrap_or("another data file");
        format!("{conflict} is already defined by {other}")
    })
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y)
}

/// Deep-merges `from` into `into`; a leaf set twice is a conflict, returned
/// as its `data.a.b` path.
fn merge(
    into: &mut serde_json::Value,
    from: serde_json::Value,
    at: &mut Vec<String>,
) -> Result<(), String> {
    match (into, from) {
        (serde_json::Value::Object(into), serde_json::Value::Object(from)) => {
            for (key, value) in from {
                at.push(key.clone());
                match into.get_mut(&key) {
                    Some(existing) => merge(existing, value, at)?,
                    None => {
                        into.insert(key, value);
                    }
                }
                at.pop();
            }
            Ok(())
        }
        _ => Err(at.join(".")),
    }
}

/// YAML data documents follow the YAML 1.2 core schema: plain scalars may
/// be null, booleans or numbers, quoted ones are strings.
fn yaml_to_json(path: &Path, text: &str) -> Result<serde_json::Value, BundleError> {
    let doc = yaml::parse(text).map_err(|issue| {
        file_error(
            path,
            Some(issue.line),
            format!("invalid YAML: {}", issue.message),
        )
    })?;
    if let Some(issue) = doc.issues.first() {
        return Err(file_error(path, Some(issue.line), issue.message.clone()));
    }
    match doc.root {
        None => Ok(serde_json::Value::Object(serde_json::Map::new())),
        Some(root) => Ok(node_to_json(root)),
    }
}

fn node_to_json(node: yaml::Node) -> serde_json::Value {
    use serde_json::Value as J;
    match node.value {
        yaml::Value::Null => J::Null,
        yaml::Value::Scalar { text, plain: false } => J::String(text),
        yaml::Value::Scalar { text, plain: true } => match text.as_str() {
            "true" | "True" | "TRUE" => J::Bool(true),
            "false" | "False" | "FALSE" => J::Bool(false),
            _ => plain_number(&text).map_or(J::String(text), J::Number),
        },
        yaml::Value::Seq(items) => J::Array(items.into_iter().map(node_to_json).collect()),
        yaml::Value::Map(entries) => J::Object(
            entries
                .into_iter()
                .map(|e| (e.key, node_to_json(e.value)))
                .collect(),
        ),
    }
}

fn plain_number(text: &str) -> Option<serde_json::Number> {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    if let Ok(i) = text.parse::<i64>() {
        return Some(i.into());
    }
    if let Ok(u) = text.parse::<u64>() {
        return Some(u.into());
    }
    if !digits
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
    {
        return None;
    }
    text.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
}

/// Content hash of what the dataplanes will evaluate.
fn revision(modules: &[(String, String)], data: &serde_json::Value, decision: &str) -> String {
    let mut hash = Sha256::new();
    for (rel, source) in modules {
        hash.update(b"module\0");
        hash.update(rel.as_bytes());
        hash.update(b"\0");
        hash.update((source.len() as u64).to_be_bytes());
        hash.update(source.as_bytes());
    }
    hash.update(b"data\0");
    hash.update(data.to_string().as_bytes());
    hash.update(b"\0decision\0");
    hash.update(decision.as_bytes());
    hex::encode(hash.finalize())
}
