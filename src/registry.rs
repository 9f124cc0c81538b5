//! The tool registry: which extension owns which tool, and the schemas to
//! hand to an LLM API.
//!
//! Collisions are resolved deterministically and visibly: when two
//! extensions declare the same tool, the one first in service-name order
//! keeps it; the other's is left out, logged as a warning, and listed in
//! [`Conflict`]s. Tool names outside `^[a-zA-Z0-9_-]{1,64}$` (the limit of
//! common LLM APIs) are warned about.
//!
//! The registry of a running set of extensions is read through
//! [`ServiceManager::tools`](crate::manager::ServiceManager::tools) and
//! [`ServiceManager::conflicts`](crate::manager::ServiceManager::conflicts).
//!
//! # Example
//!
//! ```
//! use exthost::registry::is_portable_tool_name;
//!
//! assert!(is_portable_tool_name("get_weather"));
//! assert!(!is_portable_tool_name("weather.get")); // most LLM APIs refuse dots
//! ```

use std::collections::HashMap;
use std::sync::Arc;

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

/// Routes from tool names to owners, built from every service's tools.
#[derive(Debug)]
pub(crate) struct Table<T> {
    pub(crate) routes: HashMap<String, Arc<T>>,
    pub(crate) tools: Vec<RegisteredTool>,
    pub(crate) conflicts: Vec<Conflict>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            routes: HashMap::new(),
            tools: Vec::new(),
            conflicts: Vec::new(),
        }
    }
}

impl<T> Table<T> {
    /// Builds the table; `services` must come in name order.
    pub(crate) fn build<'a>(
        services: impl IntoIterator<Item = (&'a str, &'a [Tool], &'a Arc<T>)>,
    ) -> Self
    where
        T: 'a,
    {
        let mut table = Table::default();
        let mut owner: HashMap<String, String> = HashMap::new();
        for (service, tools, target) in services {
            for tool in tools {
                if let Some(kept) = owner.get(&tool.name) {
                    if kept != service {
                        tracing::warn!(tool = %tool.name, kept = %kept, dropped = %service, "tool declared by two extensions; the first in name order keeps it");
                        table.conflicts.push(Conflict {
                            tool: tool.name.clone(),
                            kept: kept.clone(),
                            dropped: service.to_owned(),
                        });
                    }
                    continue;
                }
                if !is_portable_tool_name(&tool.name) {
                    tracing::warn!(tool = %tool.name, %service, "tool name does not fit ^[a-zA-Z0-9_-]{{1,64}}$; LLM APIs may refuse it");
                }
                owner.insert(tool.name.clone(), service.to_owned());
                table.routes.insert(tool.name.clone(), target.clone());
                table.tools.push(RegisteredTool {
                    service: service.to_owned(),
                    tool: tool.clone(),
                });
            }
        }
        table
    }
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
