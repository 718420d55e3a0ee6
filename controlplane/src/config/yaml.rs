//! YAML text to a small tree whose every node knows its line.
//!
//! Why not serde: errors must name the line of *semantic* problems too (a
//! duplicate SPIFFE ID, a port out of range), and must all be reported at
//! once. serde stops at the first error and throws positions away. So the
//! file is first turned into this marked tree, and `validate` walks it by hand.
//!
//! Why `yaml-rust2`: `serde_yaml` is unmaintained; `yaml-rust2` is a pure-Rust,
//! YAML 1.2 compliant parser whose maintainers promise a stable API (new
//! features go to its sibling `saphyr`, whose API still moves), and its event
//! parser hands out a line/column marker with every event, which is all this
//! module needs. Building the tree ourselves also lets us reject duplicate
//! keys (a second `burst:` silently overriding the first is exactly the kind
//! of mistake that disables a limit) and bound alias expansion.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Upper bound on nodes, counting alias expansions (a "billion laughs"
/// document must fail, not eat the control plane's memory).
const MAX_NODES: usize = 1_000_000;

/// A YAML node and the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null`, or nothing at all (`key:`).
    Null,
    /// Any scalar. `plain` is false for quoted and block scalars, which are
    /// always strings and never numbers or booleans.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in file order. Keys are scalars and unique (checked).
    Map(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_line: usize,
    pub value: Node,
}

/// A problem in the YAML itself, before any meaning is given to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub line: usize,
    pub message: String,
}

/// A parsed document plus the structural problems that did not stop parsing
/// (duplicate keys, complex keys). A syntax error is returned as `Err`.
#[derive(Debug)]
pub struct Document {
    /// `None` for an empty file.
    pub root: Option<Node>,
    pub issues: Vec<Issue>,
}

impl Node {
    /// A short human name of the node's kind, for "expected X, found Y".
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    fn size(&self) -> usize {
        match &self.value {
            Value::Null | Value::Scalar { .. } => 1,
            Value::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Value::Map(entries) => 1 + entries.iter().map(|e| 1 + e.value.size()).sum::<usize>(),
        }
    }
}

/// Parses one YAML document. Multi-document streams are rejected: a mesh is
/// one document, and a stray `---` more likely hides a mistake.
pub fn parse(text: &str) -> Result<Document, Issue> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = parser.next_token().map_err(|e| Issue {
            line: e.marker().line(),
            message: e.info().to_string(),
        })?;
        if event == Event::StreamEnd {
            break;
        }
        builder.on_event(event, mark)?;
    }
    Ok(Document {
        root: builder.root,
        issues: builder.issues,
    })
}

enum Frame {
    Seq {
        line: usize,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        line: usize,
        anchor: usize,
        entries: Vec<Entry>,
        /// The key waiting for its value; `None` inside means the key was
        /// not a usable scalar and its value is dropped.
        pending_key: Option<Option<(String, usize)>>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    documents: usize,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    issues: Vec<Issue>,
}

impl Builder {
    fn on_event(&mut self, event: Event, mark: Marker) -> Result<(), Issue> {
        let line = mark.line();
        match event {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(Issue {
                        line,
                        message:
                            "more than one YAML document (`---`); a mesh file holds exactly one"
                                .into(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = style == TScalarStyle::Plain;
                let value = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL")
                {
                    Value::Null
                } else {
                    Value::Scalar { text, plain }
                };
                self.complete(Node { line, value }, anchor)?;
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or_else(|| Issue {
                    line,
                    message: "alias refers to an unknown anchor".into(),
                })?;
                let node = Node { line, ..node };
                self.complete(node, 0)?;
            }
            Event::SequenceStart(anchor, _tag) => self.stack.push(Frame::Seq {
                line,
                anchor,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _tag) => self.stack.push(Frame::Map {
                line,
                anchor,
                entries: Vec::new(),
                pending_key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        line,
                        anchor,
                        items,
                    }) => (
                        Node {
                            line,
                            value: Value::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        line,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            line,
                            value: Value::Map(entries),
                        },
                        anchor,
                    ),
                    None => {
                        return Err(Issue {
                            line,
                            message: "unbalanced YAML collection".into(),
                        });
                    }
                };
                // The node was counted item by item as it was built; undo
                // that before `complete` counts it whole.
                self.nodes = self.nodes.saturating_sub(node.size().saturating_sub(1));
                self.complete(node, anchor)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    /// Hands a finished node to its parent (or makes it the root).
    fn complete(&mut self, node: Node, anchor: usize) -> Result<(), Issue> {
        self.nodes = self.nodes.saturating_add(node.size());
        if self.nodes > MAX_NODES {
            return Err(Issue {
                line: node.line,
                message: format!(
                    "document too large (more than {MAX_NODES} nodes after expanding aliases)"
                ),
            });
        }
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => {
                    let key = match node.value {
                        Value::Scalar { text, .. } => Some((text, node.line)),
                        Value::Null => Some((String::new(), node.line)),
                        _ => {
                            self.issues.push(Issue {
                                line: node.line,
                                message: format!(
                                    "mapping keys must be scalars, found {}",
                                    node.kind()
                                ),
                            });
                            None
                        }
                    };
                    if let Some((key, _)) = &key
                        && let Some(first) = entries.iter().find(|e| &e.key == key)
                    {
                        self.issues.push(Issue {
                            line: node.line,
                            message: format!(
                                "duplicate key `{key}` (first defined on line {})",
                                first.key_line
                            ),
                        });
                        *pending_key = Some(None);
                    } else {
                        *pending_key = Some(key);
                    }
                }
                Some(Some((key, key_line))) => entries.push(Entry {
                    key,
                    key_line,
                    value: node,
                }),
                Some(None) => {}
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(node: &Node) -> &[Entry] {
        match &node.value {
            Value::Map(entries) => entries,
            other => panic!("expected a mapping, found {other:?}"),
        }
    }

    #[test]
    fn nodes_carry_one_based_lines() {
        let doc = parse("# comment\na: 1\nb:\n  - x\n  - 'y'\nc:\n").unwrap();
        let root = doc.root.unwrap();
        let entries = map(&root);
        assert_eq!(entries[0].key, "a");
        assert_eq!(entries[0].key_line, 2);
        assert_eq!(
            entries[0].value.value,
            Value::Scalar {
                text: "1".into(),
                plain: true
            }
        );
        let Value::Seq(items) = &entries[1].value.value else {
            panic!("b is a list")
        };
        assert_eq!(items[1].line, 5);
        assert_eq!(
            items[1].value,
            Value::Scalar {
                text: "y".into(),
                plain: false
            }
        );
        assert_eq!(entries[2].value.value, Value::Null);
        assert!(doc.issues.is_empty());
    }

    #[test]
    fn duplicate_keys_are_issues_with_lines() {
        let doc = parse("a: 1\nb: 2\na: 3\n").unwrap();
        assert_eq!(doc.issues.len(), 1);
        assert_eq!(doc.issues[0].line, 3);
        assert!(doc.issues[0].message.contains("first defined on line 1"));
        // The first value wins, the duplicate is dropped.
        assert_eq!(map(doc.root.as_ref().unwrap()).len(), 2);
    }

    #[test]
    fn syntax_error_has_a_line() {
        let err = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err:?}");
    }

    #[test]
    fn aliases_expand_and_are_bounded() {
        let doc = parse("base: &b {x: 1}\nother: *b\n").unwrap();
        let entries = map(doc.root.as_ref().unwrap());
        assert_eq!(map(&entries[1].value)[0].key, "x");

        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse(&bomb).unwrap_err();
        assert!(err.message.contains("too large"), "{err:?}");
    }

    #[test]
    fn multiple_documents_rejected() {
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn empty_file_has_no_root() {
        assert!(parse("").unwrap().root.is_none());
        assert!(parse("# only a comment\n").unwrap().root.is_none());
    }
}
