//! `multipart/form-data` bodies for `input.parsed_body`, as
//! opa-envoy-plugin reads them with Go's `mime/multipart`: one array of
//! values per field name (in order), a part whose `Content-Type` contains
//! `application/json` parsed as JSON, any other part as text; parts that
//! are not `form-data` or have no `name` are skipped; a preamble before the
//! first boundary is ignored; `\r\n` or `\n` line endings. A body that does
//! not parse is an error (the plugin answers 400).

use serde_json::{Map, Value};

/// Why a multipart body could not be read (the plugin's texts where they
/// are stable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("mime: no media type")]
    NoMediaType,
    #[error("multipart: NextPart: EOF")]
    NoBoundaryLine,
    #[error("multipart: unexpected EOF in part")]
    Truncated,
    #[error("malformed MIME header line: {0}")]
    Header(String),
    #[error("{0}")]
    Json(String),
}

/// The `boundary` parameter of a content type (`None`: no boundary, the
/// body is not parsed); `Err` when the media type itself is missing.
pub fn boundary(content_type: &str) -> Result<Option<String>, MultipartError> {
    let mut parts = content_type.split(';');
    let media = parts.next().unwrap_or_default().trim();
    if media.is_empty() {
        return Err(MultipartError::NoMediaType);
    }
    for param in parts {
        let Some((k, v)) = param.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("boundary") {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            return Ok((!v.is_empty()).then(|| v.to_string()));
        }
    }
    Ok(None)
}

/// `{"name": [value, ...]}` for a body with `boundary`.
pub fn parse(body: &[u8], boundary: &str) -> Result<Value, MultipartError> {
    let text = String::from_utf8_lossy(body);
    let delimiter = format!("--{boundary}");
    let lines: Vec<&str> = text.split('\n').collect();
    let is_delim = |l: &str, end: bool| {
        let l = l
            .strip_suffix('\r')
            .unwrap_or(l)
            .trim_end_matches([' ', '\t']);
        if end {
            l == format!("{delimiter}--")
        } else {
            l == delimiter
        }
    };
    let mut i = lines
        .iter()
        .position(|l| is_delim(l, false) || is_delim(l, true))
        .ok_or(MultipartError::NoBoundaryLine)?;
    let mut fields: Map<String, Value> = Map::new();
    while !is_delim(lines[i], true) {
        i += 1;
        // Headers, up to the blank line.
        let mut headers = Vec::new();
        loop {
            let line = *lines.get(i).ok_or(MultipartError::Truncated)?;
            let line = line.strip_suffix('\r').unwrap_or(line);
            i += 1;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| MultipartError::Header(line.to_string()))?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        // The body, up to the next delimiter (the line break before it
        // belongs to the delimiter).
        let start = i;
        while !lines
            .get(i)
            .is_some_and(|l| is_delim(l, false) || is_delim(l, true))
        {
            if i >= lines.len() {
                return Err(MultipartError::Truncated);
            }
            i += 1;
        }
        let mut value = lines[start..i].join("\n");
        if value.ends_with('\r') {
            value.pop();
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let Some(name) = header("content-disposition").and_then(form_name) else {
            continue;
        };
        let value = if header("content-type").is_some_and(|t| t.contains("application/json")) {
            serde_json::from_str(&value).map_err(|e| MultipartError::Json(e.to_string()))?
        } else {
            Value::String(value)
        };
        match fields.get_mut(&name) {
            Some(Value::Array(values)) => values.push(value),
            _ => {
                fields.insert(name, Value::Array(vec![value]));
            }
        }
    }
    Ok(Value::Object(fields))
}

/// The `name` of a `form-data` disposition.
fn form_name(disposition: &str) -> Option<String> {
    let mut parts = disposition.split(';');
    if !parts.next()?.trim().eq_ignore_ascii_case("form-data") {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("name") {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        (!v.is_empty()).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_become_arrays_and_json_parts_json() {
        let body = "preamble\r\n--XyZ\r\n\
            Content-Disposition: form-data; name=\"a\"\r\n\r\n\
            one\r\n--XyZ\r\n\
            Content-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n\
            {\"k\": [1, 2]}\r\n--XyZ\r\n\
            Content-Disposition: form-data; name=\"a\"\r\n\r\n\
            two\nlines\r\n--XyZ\r\n\
            Content-Disposition: attachment; name=\"skipped\"\r\n\r\n\
            x\r\n--XyZ--\r\n";
        assert_eq!(
            parse(body.as_bytes(), "XyZ").unwrap(),
            json!({"a": ["one", "two\nlines"], "meta": [{"k": [1, 2]}]})
        );
        let lf = "--b\nContent-Disposition: form-data; name=x\n\nv\n--b--\n";
        assert_eq!(parse(lf.as_bytes(), "b").unwrap(), json!({"x": ["v"]}));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert_eq!(
            parse(b"no delimiter", "b"),
            Err(MultipartError::NoBoundaryLine)
        );
        assert_eq!(
            parse(
                b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\nv",
                "b"
            ),
            Err(MultipartError::Truncated)
        );
        assert!(matches!(
            parse(b"--b\r\nbad header\r\n\r\nv\r\n--b--", "b"),
            Err(MultipartError::Header(_))
        ));
        assert_eq!(
            boundary("multipart/form-data; boundary=\"a b\"")
                .unwrap()
                .as_deref(),
            Some("a b")
        );
        assert_eq!(boundary("multipart/form-data").unwrap(), None);
        assert_eq!(boundary("; boundary=x"), Err(MultipartError::NoMediaType));
    }
}
