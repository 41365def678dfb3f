//! Where each node of a YAML document starts, so problems found after parsing (an unknown
//! action, a Rhai syntax error inside a `when`) are reported as `file:line:column`.
//!
//! serde_yaml reports positions only for its own errors; this index is built from the YAML
//! parser's event stream and maps a path such as `spec.steps[1].action` to its position.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based position in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Line.
    pub line: usize,
    /// Column.
    pub column: usize,
}

/// How a scalar was written, which decides where its text starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// Plain or quoted, on the node's own line.
    Inline { quoted: bool },
    /// A `|` or `>` block: the text starts on the next line.
    Block,
    /// A mapping or sequence.
    Collection,
}

/// Positions of every node of a document, by path.
#[derive(Debug, Default)]
pub struct Positions {
    nodes: HashMap<String, (Pos, Style)>,
    keys: HashMap<String, Pos>,
    lines: Vec<String>,
}

impl Positions {
    /// Indexes a YAML text. A text the parser rejects gives an empty index (serde_yaml reports
    /// the syntax error itself).
    pub fn index(text: &str) -> Positions {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // An error leaves what was indexed so far, which is still useful.
        let _ = parser.load(&mut builder, false);
        Positions {
            nodes: builder.nodes,
            keys: builder.keys,
            lines: text.lines().map(str::to_owned).collect(),
        }
    }

    /// The position of the node at `path` (e.g. `spec.steps[0].with.container`), or of its
    /// closest indexed ancestor, or 1:1.
    pub fn of(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some((pos, _)) = self.nodes.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = p.get(..i).unwrap_or(""),
                None => return Pos { line: 1, column: 1 },
            }
        }
    }

    /// The position of the key of the mapping entry at `path` (where an unknown key is
    /// reported), or of its value when the key was not indexed.
    pub fn key(&self, path: &str) -> Pos {
        self.keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.of(path))
    }

    /// The position of `line`:`column` (1-based) inside the text of the scalar at `path`, e.g.
    /// a Rhai error inside a `when: |` block.
    pub fn inside(&self, path: &str, line: usize, column: usize) -> Pos {
        let Some((start, style)) = self.nodes.get(path) else {
            return self.of(path);
        };
        match style {
            Style::Block => {
                // The parser marks a block scalar at its first content line.
                let file_line = start.line + line - 1;
                // The block's indentation is that of its first line; YAML strips it.
                let indent = self
                    .lines
                    .get(start.line.saturating_sub(1))
                    .map_or(0, |l| l.len() - l.trim_start().len());
                Pos {
                    line: file_line,
                    column: indent + column,
                }
            }
            Style::Inline { quoted } if line <= 1 => Pos {
                line: start.line,
                column: start.column + column - 1 + usize::from(*quoted),
            },
            _ => Pos {
                line: start.line + line - 1,
                column,
            },
        }
    }
}

#[derive(Debug)]
enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Debug, Default)]
struct Builder {
    stack: Vec<Frame>,
    nodes: HashMap<String, (Pos, Style)>,
    keys: HashMap<String, Pos>,
}

impl Builder {
    /// The path of the node that starts now, advancing the parent's state. `None` for a key.
    fn next_path(&mut self, scalar: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(if path.is_empty() {
                    k
                } else {
                    format!("{path}.{k}")
                }),
                None => {
                    *key = Some(scalar.unwrap_or("?").to_owned());
                    None
                }
            },
        }
    }
}

fn pos(mark: Marker) -> Pos {
    Pos {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, style, _, _) => {
                let parent = match self.stack.last() {
                    Some(Frame::Map { path, key: None }) => Some(path.clone()),
                    _ => None,
                };
                if let Some(parent) = parent {
                    let key = if parent.is_empty() {
                        value.clone()
                    } else {
                        format!("{parent}.{value}")
                    };
                    self.keys.insert(key, pos(mark));
                }
                if let Some(path) = self.next_path(Some(&value)) {
                    let style = match style {
                        TScalarStyle::Literal | TScalarStyle::Folded => Style::Block,
                        TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => {
                            Style::Inline { quoted: true }
                        }
                        _ => Style::Inline { quoted: false },
                    };
                    self.nodes.insert(path, (pos(mark), style));
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.next_path(Some("*alias")) {
                    self.nodes.insert(path, (pos(mark), Style::Collection));
                }
            }
            Event::MappingStart(..) => {
                let path = self.next_path(None).unwrap_or_default();
                self.nodes
                    .insert(path.clone(), (pos(mark), Style::Collection));
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.next_path(None).unwrap_or_default();
                self.nodes
                    .insert(path.clone(), (pos(mark), Style::Collection));
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DOC: &str = "apiVersion: riposte/v1\nspec:\n  match:\n    when: |\n      event.title == \"x\"\n        && bad(\n  steps:\n    - id: a\n      action: log.info\n    - id: b\n      action: \"nope.x\"\n";

    #[test]
    fn finds_nodes_by_path() {
        let p = Positions::index(DOC);
        assert_eq!(
            p.of("apiVersion"),
            Pos {
                line: 1,
                column: 13
            }
        );
        assert_eq!(
            p.of("spec.steps[1].action"),
            Pos {
                line: 11,
                column: 15
            }
        );
        assert_eq!(p.of("spec.steps[1].with.x"), p.of("spec.steps[1]"));
    }

    #[test]
    fn maps_positions_inside_block_and_quoted_scalars() {
        let p = Positions::index(DOC);
        assert_eq!(
            p.inside("spec.match.when", 2, 12),
            Pos {
                line: 6,
                column: 18
            }
        );
        assert_eq!(
            p.inside("spec.steps[1].action", 1, 1),
            Pos {
                line: 11,
                column: 16
            }
        );
    }
}
