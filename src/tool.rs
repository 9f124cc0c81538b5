//! The tool description handed to an LLM API.

use serde::{Deserialize, Serialize};

use crate::proto::ToolDef;

/// A tool an extension offers: its name, description and JSON Schema.
///
/// On the wire this is a [`ToolDef`], whose `parameters` are JSON bytes.
///
/// # Example
///
/// ```
/// use exthost::Tool;
/// use serde_json::json;
///
/// let tool = Tool::new("echo", "Returns its arguments", json!({"type": "object"}));
/// let def = tool.to_def();
/// assert_eq!(def.parameters, br#"{"type":"object"}"#);
/// assert_eq!(Tool::from_def(def)?, tool);
/// # Ok::<(), exthost::BadToolSchema>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// The tool's name, unique among the tools an agent sees.
    pub name: String,
    /// What the tool does, for the model.
    pub description: String,
    /// The JSON Schema of the tool's arguments.
    pub parameters: serde_json::Value,
    /// Whether the model must follow the schema strictly.
    pub strict: bool,
}

/// A tool whose `parameters` bytes are not valid JSON.
#[derive(Debug, thiserror::Error)]
#[error("tool `{tool}` has invalid parameters schema: {source}")]
pub struct BadToolSchema {
    /// The tool's name.
    pub tool: String,
    /// Why the bytes did not parse.
    #[source]
    pub source: serde_json::Error,
}

impl Tool {
    /// A non-strict tool.
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: serde_json::Value,
    ) -> Self {
        Tool {
            name: name.into(),
            description: description.into(),
            parameters,
            strict: false,
        }
    }

    /// Sets `strict`.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// The wire form.
    pub fn to_def(&self) -> ToolDef {
        ToolDef {
            name: self.name.clone(),
            description: self.description.clone(),
            parameters: serde_json::to_vec(&self.parameters)
                .expect("a serde_json::Value always serializes"),
            strict: self.strict,
        }
    }

    /// Parses the wire form; unparseable `parameters` are an error naming
    /// the tool.
    pub fn from_def(def: ToolDef) -> Result<Self, BadToolSchema> {
        let parameters =
            serde_json::from_slice(&def.parameters).map_err(|source| BadToolSchema {
                tool: def.name.clone(),
                source,
            })?;
        Ok(Tool {
            name: def.name,
            description: def.description,
            parameters,
            strict: def.strict,
        })
    }
}
