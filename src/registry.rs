//! The tool registry: which extension owns which tool, and the schemas to
//! hand to an LLM API.
//!
//! Collisions are resolved deterministically and visibly: when two
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

use serde::Serialize;

use crate::tool::Tool;

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
