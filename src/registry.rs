//! The tool registry: which extension owns which tool, and the schemas to
//! hand to an LLM API.
//!
//! Only names LLM APIs accept are advertised by default ([`ToolNames`]);
//! the others are [`LeftOut`], with a reason. So are tools whose
//! `parameters` are not an object schema (see
//! [`SchemaProblem`]), and a second declaration of
//! one name by one extension. Collisions are resolved
//! deterministically and visibly: when two
//! extensions declare the same tool, the one first in service-name order
//! keeps it; the other's is left out, logged as a warning, and listed in
//! [`Conflict`]s. Tool names outside `^[a-zA-Z0-9_-]{1,64}$` (the limit of
//! common LLM APIs) are warned about.
//!
//! The tools of a running set of extensions are read through
//! [`ServiceManager::tools`](crate::manager::ServiceManager::tools) and
//! [`ServiceManager::conflicts`](crate::manager::ServiceManager::conflicts);
//! the [`RoutingTable`](crate::router::RoutingTable) builds them.
//!
//! # Example
//!
//! ```
//! use exthost::registry::is_portable_tool_name;
//!
//! assert!(is_portable_tool_name("get_weather"));
//! assert!(!is_portable_tool_name("weather.get")); // most LLM APIs refuse dots
//! ```

use serde::{Serialize, Serializer};

use crate::tool::{SchemaProblem, Tool};

/// A tool and the service that owns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegisteredTool {
    /// The owning service.
    pub service: String,
    /// The tool.
    #[serde(flatten)]
    pub tool: Tool,
}

/// A tool declared by more than one extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// The tool name.
    pub tool: String,
    /// The service that keeps it (first in name order).
    pub kept: String,
    /// The service whose tool was left out.
    pub dropped: String,
}

pub use crate::config::ToolNames;

/// Why a declared tool is not advertised.
///
/// Serialized as its [`kind`](Self::kind).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeftOutReason {
    /// The name is empty.
    Empty,
    /// The name holds control characters (a newline, say) or invisible
    /// formatting characters (zero widths, bidirectional controls).
    ControlCharacters,
    /// The name does not fit `^[a-zA-Z0-9_-]{1,64}$` (with the default
    /// [`ToolNames::Portable`]).
    NotPortable,
    /// The same extension declared the name more than once; every one of
    /// its declarations is left out (which one it means is unknown).
    DeclaredTwice,
    /// Its `parameters` are not an object schema LLM APIs accept (see
    /// [`SchemaProblem`]).
    BadSchema(SchemaProblem),
}

impl LeftOutReason {
    /// The reason's stable name: `empty`, `control_characters`,
    /// `not_portable`, `declared_twice` or `bad_schema`.
    pub fn kind(&self) -> &'static str {
        match self {
            LeftOutReason::Empty => "empty",
            LeftOutReason::ControlCharacters => "control_characters",
            LeftOutReason::NotPortable => "not_portable",
            LeftOutReason::DeclaredTwice => "declared_twice",
            LeftOutReason::BadSchema(_) => "bad_schema",
        }
    }
}

impl Serialize for LeftOutReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.kind())
    }
}

impl std::fmt::Display for LeftOutReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let LeftOutReason::BadSchema(problem) = self {
            return problem.fmt(f);
        }
        f.write_str(match self {
            LeftOutReason::BadSchema(_) => unreachable!("written above"),
            LeftOutReason::Empty => "the name is empty",
            LeftOutReason::ControlCharacters => "the name holds control characters",
            LeftOutReason::NotPortable => {
                "the name does not fit ^[a-zA-Z0-9_-]{1,64}$ (set tool_names = \"any\" to keep it)"
            }
            LeftOutReason::DeclaredTwice => {
                "declared more than once by the same extension; every definition is left out"
            }
        })
    }
}

/// A declared tool that is not advertised, and why.
///
/// Serialized as `{"service", "tool", "reason", "message"}`: `reason` is
/// the reason's [`kind`](LeftOutReason::kind), `message` its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    /// The service that declared it.
    pub service: String,
    /// The name as declared (print it escaped: it may hold anything).
    pub tool: String,
    /// Why it is left out.
    pub reason: LeftOutReason,
}

impl Serialize for LeftOut {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("LeftOut", 4)?;
        st.serialize_field("service", &self.service)?;
        st.serialize_field("tool", &self.tool)?;
        st.serialize_field("reason", self.reason.kind())?;
        st.serialize_field("message", &self.reason.to_string())?;
        st.end()
    }
}

impl std::fmt::Display for LeftOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tool {:?} of `{}` is left out: {}",
            self.tool, self.service, self.reason
        )
    }
}

/// Why `name` may not be advertised under `policy`, if it may not.
pub fn check_tool_name(name: &str, policy: ToolNames) -> Option<LeftOutReason> {
    if name.is_empty() {
        Some(LeftOutReason::Empty)
    } else if name
        .chars()
        .any(|c| c.is_control() || is_invisible_format(c))
    {
        Some(LeftOutReason::ControlCharacters)
    } else if policy == ToolNames::Portable && !is_portable_tool_name(name) {
        Some(LeftOutReason::NotPortable)
    } else {
        None
    }
}

/// Invisible formatting characters that can hide or reorder text: zero
/// widths, bidirectional controls, line and paragraph separators, the BOM.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Whether `name` fits `^[a-zA-Z0-9_-]{1,64}$`, what common LLM APIs accept.
pub fn is_portable_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_names_are_1_to_64_of_the_llm_alphabet() {
        assert!(is_portable_tool_name("get_weather-v2"));
        assert!(is_portable_tool_name(&"x".repeat(64)));
        assert!(!is_portable_tool_name(&"x".repeat(65)));
        assert!(!is_portable_tool_name(""));
        assert!(!is_portable_tool_name("has space"));
        assert!(!is_portable_tool_name("dotted.name"));
    }
}
