//! A strict RFC 8259 JSON parser that builds a [`serde_json::Value`] and
//! refuses whatever another parser could read differently.
//!
//! Written by hand rather than on top of `serde_json::from_slice` because
//! each refusal here is a place where serde_json (or the MCP server's own
//! parser) would quietly pick a reading: serde_json keeps the last of
//! duplicate keys, turns integers beyond 64 bits into lossy floats and reads
//! `-0` as a float, and says nothing of which key or number it was. A custom
//! `Visitor` can catch duplicates but not the number cases, and the checks
//! would be spread across serde's callbacks. One small recursive-descent
//! parser over the bytes states every rule in one place, reports the byte
//! offset of each error and decides every number itself.
//!
//! Rules beyond the grammar:
//! - duplicate keys in an object are refused, compared after unescaping
//!   (`"na\u006de"` is `"name"`);
//! - a `\u` escape of a lone surrogate is refused (it has no UTF-8 form, so
//!   parsers disagree on what it becomes);
//! - an integer (no fraction, no exponent) must fit `u64` if non-negative,
//!   `i64` if negative; `-0` is the integer 0, as Python reads it;
//! - any other number is an `f64`, correctly rounded, and must be finite
//!   (`1e400` is refused, `1e-400` is 0.0);
//! - nesting deeper than the limit is refused; the parser recurses once per
//!   level, so the limit also bounds its stack;
//! - the input is `&str`: UTF-8 and the absence of a BOM are checked by the
//!   caller.

use serde_json::{Map, Number, Value};

use super::error::{McpError, bounded};

/// Parses `text` as exactly one JSON value, surrounded by nothing but JSON
/// whitespace, nested at most `max_depth` containers deep.
pub(crate) fn parse(text: &str, max_depth: usize) -> Result<Value, McpError> {
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        max_depth,
    };
    parser.skip_whitespace();
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.pos < parser.bytes.len() {
        return Err(McpError::TrailingData);
    }
    Ok(value)
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    max_depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn error(&self, reason: &'static str) -> McpError {
        McpError::Syntax {
            at: self.pos,
            reason,
        }
    }

    /// JSON whitespace only: space, tab, LF, CR (RFC 8259 §2).
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// `depth` is the number of containers around this value.
    fn value(&mut self, depth: usize) -> Result<Value, McpError> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Value::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'N' | b'I') => Err(self.error("NaN and Infinity are not JSON")),
            Some(_) => Err(self.error("expected a JSON value")),
            None => Err(self.error("unexpected end of input, expected a JSON value")),
        }
    }

    fn literal(&mut self, word: &'static str, value: Value) -> Result<Value, McpError> {
        let end = self.pos.saturating_add(word.len());
        if self.bytes.get(self.pos..end) == Some(word.as_bytes()) {
            self.pos = end;
            Ok(value)
        } else {
            Err(self.error("expected a JSON value"))
        }
    }

    fn enter(&self, depth: usize) -> Result<(), McpError> {
        if depth > self.max_depth {
            Err(McpError::TooDeep {
                limit: self.max_depth,
            })
        } else {
            Ok(())
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, McpError> {
        self.enter(depth)?;
        self.pos += 1; // '{'
        let mut map = Map::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key"));
            }
            let key = self.string()?;
            if map.contains_key(&key) {
                return Err(McpError::DuplicateKey { key: bounded(&key) });
            }
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':' after an object key"));
            }
            self.pos += 1;
            self.skip_whitespace();
            let value = self.value(depth)?;
            map.insert(key, value);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_whitespace();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(self.error("expected ',' or '}' in an object")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, McpError> {
        self.enter(depth)?;
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_whitespace();
                }
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.error("expected ',' or ']' in an array")),
            }
        }
    }

    /// A string starting at the opening quote, unescaped.
    fn string(&mut self) -> Result<String, McpError> {
        self.pos += 1; // '"'
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // The run ends at an ASCII byte or the end of the text, both
            // char boundaries of the (valid UTF-8) text.
            let run = self
                .text
                .get(run_start..self.pos)
                .ok_or_else(|| self.error("string is not UTF-8"))?;
            out.push_str(run);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    let c = self.escape()?;
                    out.push(c);
                }
                Some(_) => return Err(self.error("control character in a string")),
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    /// One escape sequence starting at the backslash; a surrogate pair
    /// (`\uD83D\uDE00`) is one character.
    fn escape(&mut self) -> Result<char, McpError> {
        let at = self.pos;
        self.pos += 1; // '\'
        let Some(b) = self.peek() else {
            return Err(self.error("unterminated string"));
        };
        self.pos += 1;
        let c = match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4()?;
                let lone = McpError::Syntax {
                    at,
                    reason: "lone surrogate in a \\u escape",
                };
                match unit {
                    0xD800..=0xDBFF => {
                        if self.bytes.get(self.pos..self.pos.saturating_add(2)) != Some(b"\\u") {
                            return Err(lone);
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(lone);
                        }
                        let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                        char::from_u32(code).ok_or(lone)?
                    }
                    0xDC00..=0xDFFF => return Err(lone),
                    _ => char::from_u32(unit).ok_or(lone)?,
                }
            }
            _ => {
                self.pos = at;
                return Err(self.error("invalid escape in a string"));
            }
        };
        Ok(c)
    }

    fn hex4(&mut self) -> Result<u32, McpError> {
        let mut unit = 0u32;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return Err(self.error("expected four hex digits after \\u")),
            };
            unit = (unit << 4) | u32::from(digit);
            self.pos += 1;
        }
        Ok(unit)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<Value, McpError> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            Some(b'I') => return Err(self.error("NaN and Infinity are not JSON")),
            _ => return Err(self.error("expected a digit")),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            integer = false;
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("expected a digit after '.'"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            integer = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("expected a digit in the exponent"));
            }
            self.digits();
        }
        let token = self
            .text
            .get(start..self.pos)
            .ok_or(McpError::NumberOutOfRange)?;
        let number = if integer && negative {
            match token
                .parse::<i64>()
                .map_err(|_| McpError::NumberOutOfRange)?
            {
                0 => Number::from(0u64),
                n => Number::from(n),
            }
        } else if integer {
            Number::from(
                token
                    .parse::<u64>()
                    .map_err(|_| McpError::NumberOutOfRange)?,
            )
        } else {
            let float = token
                .parse::<f64>()
                .map_err(|_| McpError::NumberOutOfRange)?;
            Number::from_f64(float).ok_or(McpError::NumberOutOfRange)?
        };
        Ok(Value::Number(number))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }
}
