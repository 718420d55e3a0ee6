//! `protocol: mcp`: a service whose Streamable HTTP endpoint carries Model
//! Context Protocol JSON-RPC messages, which the dataplane parses strictly so
//! policy can decide per tool (`input.meshward.mcp`), and its wire form.
//!
//! The settings are few on purpose: where the endpoint is, how large a body
//! the dataplane inspects (anything larger is refused, never forwarded
//! unjudged), whether `tools/list` answers are filtered, and per-tool limits.

use std::collections::BTreeMap;

use super::RateLimitSettings;
use crate::pb::v1 as pb;

/// The default endpoint path (the MCP SDKs' default).
pub const DEFAULT_PATH: &str = "/mcp";
/// The default inspection limit: tool calls are small; a body this large is
/// already unusual.
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 64 * 1024;
/// The largest inspection limit `mesh.yaml` may set: the body is buffered
/// whole before it is judged.
pub const MAX_MESSAGE_BYTES: u32 = 1024 * 1024;
/// The longest tool name a per-tool limit may key.
const MAX_TOOL_NAME: usize = 128;
const MAX_PATH: usize = 256;

/// How the dataplane treats a `protocol: mcp` service.
#[derive(Debug, Clone, PartialEq)]
pub struct McpSettings {
    /// The Streamable HTTP endpoint, a canonical absolute path.
    pub path: String,
    /// Bodies larger than this are refused (JSON-RPC parse error / 413).
    pub max_message_bytes: u32,
    /// Answer `tools/list` with only the tools policy lets the caller call.
    pub filter_tools_list: bool,
    /// Per caller and tool: a token bucket for `tools/call` of that tool.
    pub tool_limits: BTreeMap<String, RateLimitSettings>,
}

impl Default for McpSettings {
    fn default() -> Self {
        Self {
            path: DEFAULT_PATH.to_string(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            filter_tools_list: false,
            tool_limits: BTreeMap::new(),
        }
    }
}

impl McpSettings {
    /// Why these settings are unusable, naming the field (the one rule for
    /// `mesh.yaml` and the wire).
    pub fn check(&self) -> Result<(), String> {
        check_path(&self.path).map_err(|e| format!("mcp.path: {e}"))?;
        check_max_message_bytes(self.max_message_bytes)
            .map_err(|e| format!("mcp.max_message_bytes: {e}"))?;
        for (tool, limit) in &self.tool_limits {
            check_tool_name(tool).map_err(|e| format!("mcp.tool_limits: {e}"))?;
            check_tool_limit(limit).map_err(|e| format!("mcp.tool_limits[{tool:?}]: {e}"))?;
        }
        Ok(())
    }

    pub(crate) fn to_wire(&self) -> pb::McpSettings {
        pb::McpSettings {
            path: self.path.clone(),
            max_message_bytes: self.max_message_bytes,
            filter_tools_list: self.filter_tools_list,
            tool_limits: self
                .tool_limits
                .iter()
                .map(|(tool, limit)| pb::ToolLimit {
                    tool: tool.clone(),
                    limit: Some(limit.into()),
                })
                .collect(),
        }
    }

    pub(crate) fn from_wire(m: &pb::McpSettings) -> Result<Self, String> {
        let mut tool_limits = BTreeMap::new();
        for entry in &m.tool_limits {
            let limit = RateLimitSettings::try_from(entry.limit.as_ref())
                .map_err(|e| format!("mcp.tool_limits[{:?}]: {e}", entry.tool))?;
            if tool_limits.insert(entry.tool.clone(), limit).is_some() {
                return Err(format!("mcp.tool_limits: tool {:?} twice", entry.tool));
            }
        }
        let settings = McpSettings {
            path: m.path.clone(),
            max_message_bytes: m.max_message_bytes,
            filter_tools_list: m.filter_tools_list,
            tool_limits,
        };
        settings.check()?;
        Ok(settings)
    }
}

/// The endpoint path: canonical (what the dataplane compares after it
/// canonicalizes the request's path), so `/./mcp` and `/mcp` are one path.
pub fn check_path(path: &str) -> Result<(), String> {
    let plain = path.len() <= MAX_PATH
        && path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~'));
    let segments_ok = path == "/"
        || path.strip_prefix('/').is_some_and(|rest| {
            rest.split('/')
                .all(|s| !s.is_empty() && s != "." && s != "..")
        });
    if plain && segments_ok {
        Ok(())
    } else {
        Err(format!(
            "{path:?} is not a canonical absolute path (`/` then non-empty segments of \
             letters, digits and `-._~`, no `.` or `..`, no trailing `/`, at most {MAX_PATH} bytes)"
        ))
    }
}

pub fn check_max_message_bytes(n: u32) -> Result<(), String> {
    if (1024..=MAX_MESSAGE_BYTES).contains(&n) {
        Ok(())
    } else {
        Err(format!("{n} is outside 1024..={MAX_MESSAGE_BYTES}"))
    }
}

/// A tool name as MCP servers publish them (the spec's recommended
/// characters), so a limit's key is exactly the name a call carries.
pub fn check_tool_name(tool: &str) -> Result<(), String> {
    let ok = !tool.is_empty()
        && tool.len() <= MAX_TOOL_NAME
        && tool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tool name {tool:?} must be 1..={MAX_TOOL_NAME} of letters, digits and `_-./`"
        ))
    }
}

/// A per-tool limit is a rate: a tool call is one JSON-RPC message, not a
/// connection, so there is no concurrency to cap per tool.
fn check_tool_limit(limit: &RateLimitSettings) -> Result<(), String> {
    RateLimitSettings::check_rate(limit.requests_per_second)?;
    if !limit.rate_limited() {
        return Err("requests_per_second must be > 0".into());
    }
    if limit.burst < 1 {
        return Err("burst must be at least 1".into());
    }
    if limit.max_concurrent != 0 {
        return Err("max_concurrent is not supported per tool (limits are rates)".into());
    }
    if limit.per_destination {
        return Err("per_destination does not apply: tool limits are per service".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rps: f64, burst: u32) -> RateLimitSettings {
        RateLimitSettings {
            requests_per_second: rps,
            burst,
            ..Default::default()
        }
    }

    #[test]
    fn settings_round_trip_and_are_checked_on_the_wire() {
        let s = McpSettings {
            path: "/v1/mcp".into(),
            max_message_bytes: 4096,
            filter_tools_list: true,
            tool_limits: [("refund_invoice".to_string(), limit(1.0, 2))].into(),
        };
        assert_eq!(McpSettings::from_wire(&s.to_wire()), Ok(s.clone()));
        let mut wire = s.to_wire();
        wire.path = "/v1/../mcp".into();
        let err = McpSettings::from_wire(&wire).unwrap_err();
        assert!(err.contains("mcp.path"), "{err}");
        let mut wire = s.to_wire();
        wire.max_message_bytes = MAX_MESSAGE_BYTES + 1;
        assert!(
            McpSettings::from_wire(&wire)
                .unwrap_err()
                .contains("max_message_bytes")
        );
        let mut wire = s.to_wire();
        wire.tool_limits.push(wire.tool_limits[0].clone());
        assert!(McpSettings::from_wire(&wire).unwrap_err().contains("twice"));
    }

    #[test]
    fn paths_must_be_canonical() {
        for ok in ["/mcp", "/", "/a/b-c_d.e~f"] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "mcp", "/mcp/", "//mcp", "/a/./b", "/a/../b", "/m%63p", "/mcp;x", "/mcp?x", "/ mcp",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tool_limits_are_rates_keyed_by_plain_names() {
        assert!(check_tool_limit(&limit(1.0, 1)).is_ok());
        assert!(check_tool_limit(&limit(0.0, 1)).is_err());
        assert!(check_tool_limit(&limit(1.0, 0)).is_err());
        let concurrent = RateLimitSettings {
            max_concurrent: 2,
            ..limit(1.0, 1)
        };
        assert!(check_tool_limit(&concurrent).is_err());
        assert!(check_tool_name("get_customer").is_ok());
        for bad in ["", "a b", "x\u{5f}\0", &"t".repeat(129), "名前"] {
            assert!(check_tool_name(bad).is_err(), "{bad:?}");
        }
    }
}
