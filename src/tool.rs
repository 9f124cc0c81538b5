//! The tool description handed to an LLM API, and the rules its schema
//! must follow.

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

/// Why a tool's `parameters` cannot be handed to an LLM API: LLM APIs
/// reject a whole request when one tool's input schema is not an object
/// schema, so such a tool is left out, alone.
///
/// The rule: `parameters` must be a JSON object that is a valid JSON
/// Schema (checked against its meta-schema, draft 2020-12 unless its
/// `$schema` names another, and compiled: every `$ref` resolves within the
/// schema, every `pattern` is a regular expression) whose top-level `type`
/// is `"object"`, or that has no `type` (read as an object schema, so `{}`
/// passes). A name the same extension declares twice is left out too
/// ([`SchemaProblem::DeclaredTwice`]).
///
/// # Example
///
/// ```
/// use exthost::{SchemaProblem, Tool};
/// use serde_json::json;
///
/// assert!(Tool::new("ok", "", json!({"type": "object"})).check_parameters().is_ok());
/// assert!(Tool::new("ok", "", json!({})).check_parameters().is_ok());
/// let err = Tool::new("s", "", json!({"type": "string"})).check_parameters().unwrap_err();
/// assert!(matches!(err, SchemaProblem::NotObjectType(_)));
/// let err = Tool::new("n", "", json!(null)).check_parameters().unwrap_err();
/// assert!(matches!(err, SchemaProblem::NotAnObject(_)));
/// let err = Tool::new("i", "", json!({"properties": 3})).check_parameters().unwrap_err();
/// assert!(matches!(err, SchemaProblem::Invalid(_)));
/// let err = Tool::new("r", "", json!({"type": "object", "$ref": "#/$defs/nope"}))
///     .check_parameters()
///     .unwrap_err();
/// assert!(matches!(err, SchemaProblem::Invalid(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaProblem {
    /// The `parameters` bytes are not JSON.
    #[error("parameters are not JSON: {0}")]
    NotJson(String),
    /// The parameters are JSON, but not an object (`null`, an array, a
    /// boolean schema, …); what they are.
    #[error("parameters must be a JSON Schema object, not {0}")]
    NotAnObject(&'static str),
    /// The top-level `type` is not `"object"`; the `type` as JSON.
    #[error("parameters must describe an object: the top-level `type` is {0}, not \"object\"")]
    NotObjectType(String),
    /// The parameters are not a valid JSON Schema; the first violation of
    /// the meta-schema.
    #[error("parameters are not a valid JSON Schema: {0}")]
    Invalid(String),
    /// The same extension declared the name more than once: which
    /// definition it means is unknown, so every one is left out (whether
    /// or not its schema is valid).
    #[error("declared more than once by the same extension; every definition is left out")]
    DeclaredTwice,
}

/// A tool an extension declared that is not offered, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedTool {
    /// The tool's name, as declared.
    pub name: String,
    /// What is wrong with its definition.
    pub problem: SchemaProblem,
}

/// Splits `tools` into those whose `parameters` pass
/// [`check_parameters`] and those rejected, with why (for tool lists that
/// arrive already parsed, such as an MCP server's).
pub(crate) fn partition_checked(tools: Vec<Tool>) -> (Vec<Tool>, Vec<RejectedTool>) {
    split_checked(tools.into_iter().map(|tool| match tool.check_parameters() {
        Ok(()) => Ok(tool),
        Err(problem) => Err(RejectedTool {
            name: tool.name,
            problem,
        }),
    }))
}

/// Splits one extension's checked definitions, in the order declared, into
/// the tools offered and those left out. A name declared more than once
/// (each definition counts, valid or not) is left out with all its
/// definitions, reported once as [`SchemaProblem::DeclaredTwice`], where
/// its first definition was.
pub(crate) fn split_checked(
    defs: impl IntoIterator<Item = Result<Tool, RejectedTool>>,
) -> (Vec<Tool>, Vec<RejectedTool>) {
    let defs: Vec<_> = defs.into_iter().collect();
    let name = |d: &Result<Tool, RejectedTool>| match d {
        Ok(t) => t.name.clone(),
        Err(r) => r.name.clone(),
    };
    let mut count = std::collections::HashMap::<String, usize>::new();
    for d in &defs {
        *count.entry(name(d)).or_default() += 1;
    }
    let (mut ok, mut rejected) = (Vec::new(), Vec::new());
    for d in defs {
        let n = name(&d);
        match count.get_mut(&n) {
            Some(c) if *c > 1 => {
                // Reported once: the count is spent on the first.
                *c = 0;
                rejected.push(RejectedTool {
                    name: n,
                    problem: SchemaProblem::DeclaredTwice,
                });
            }
            Some(0) => {}
            _ => match d {
                Ok(tool) => ok.push(tool),
                Err(r) => rejected.push(r),
            },
        }
    }
    (ok, rejected)
}

/// Checks `parameters` against the rule of [`SchemaProblem`].
pub fn check_parameters(parameters: &serde_json::Value) -> Result<(), SchemaProblem> {
    use serde_json::Value;
    let object = match parameters {
        Value::Object(object) => object,
        Value::Null => return Err(SchemaProblem::NotAnObject("null")),
        Value::Bool(_) => return Err(SchemaProblem::NotAnObject("a boolean")),
        Value::Number(_) => return Err(SchemaProblem::NotAnObject("a number")),
        Value::String(_) => return Err(SchemaProblem::NotAnObject("a string")),
        Value::Array(_) => return Err(SchemaProblem::NotAnObject("an array")),
    };
    match object.get("type") {
        None => {}
        Some(Value::String(t)) if t == "object" => {}
        Some(other) => return Err(SchemaProblem::NotObjectType(other.to_string())),
    }
    let invalid = |e: jsonschema::ValidationError<'_>| {
        let at = e.instance_path().to_string();
        if at.is_empty() {
            SchemaProblem::Invalid(e.to_string())
        } else {
            SchemaProblem::Invalid(format!("at {at}: {e}"))
        }
    };
    jsonschema::meta::validate(parameters).map_err(invalid)?;
    // Compiled too, as a model's arguments will be checked against it: a
    // `$ref` that resolves to nothing, or a `pattern` that is not a
    // regular expression, passes the meta-schema but is no usable schema.
    // Nothing is fetched (the crate is built without network or file
    // resolution): a reference outside the schema is an error too.
    jsonschema::validator_for(parameters)
        .map(drop)
        .map_err(invalid)
}

impl Tool {
    /// Checks its `parameters` against the rule of [`SchemaProblem`].
    pub fn check_parameters(&self) -> Result<(), SchemaProblem> {
        check_parameters(&self.parameters)
    }

    /// Parses the wire form and checks it: a tool whose `parameters` are
    /// not JSON, or not an object schema, is rejected with why.
    pub fn from_def_checked(def: ToolDef) -> Result<Self, RejectedTool> {
        let name = def.name.clone();
        let tool = Tool::from_def(def).map_err(|bad| RejectedTool {
            name: name.clone(),
            problem: SchemaProblem::NotJson(bad.source.to_string()),
        })?;
        match tool.check_parameters() {
            Ok(()) => Ok(tool),
            Err(problem) => Err(RejectedTool { name, problem }),
        }
    }

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

/// What a tool call returns: content blocks and, optionally, structured
/// content, in the shape of MCP's `CallToolResult` (camelCase JSON, blocks
/// tagged by `type`).
///
/// A native extension's result is one text block. An MCP server's result
/// keeps every block (text, image and audio with their MIME types,
/// resource links and embedded resources) and its `structuredContent`.
///
/// # Example
///
/// ```
/// use exthost::{Content, ToolOutput};
///
/// let out = ToolOutput::from_text("hello");
/// assert_eq!(out.text(), "hello");
/// assert_eq!(out.content, [Content::Text { text: "hello".into() }]);
/// assert_eq!(
///     serde_json::to_string(&out).unwrap(),
///     r#"{"content":[{"type":"text","text":"hello"}]}"#
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ToolOutput {
    /// The content blocks, in order.
    #[serde(default)]
    pub content: Vec<Content>,
    /// The tool's structured result (MCP's `structuredContent`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured_content: Option<serde_json::Value>,
}

impl ToolOutput {
    /// One text block: what a native extension's result becomes.
    pub fn from_text(text: impl Into<String>) -> Self {
        ToolOutput {
            content: vec![Content::Text { text: text.into() }],
            structured_content: None,
        }
    }

    /// An output of `content` blocks and `structured_content`.
    pub fn new(content: Vec<Content>, structured_content: Option<serde_json::Value>) -> Self {
        ToolOutput {
            content,
            structured_content,
        }
    }

    /// The text blocks joined by newlines (the text of a native result as
    /// is). Other blocks are left out; with no text block at all, the
    /// structured content's JSON, if any, else the empty string.
    pub fn text(&self) -> String {
        let texts: Vec<&str> = self
            .content
            .iter()
            .filter_map(|c| match c {
                Content::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        match (texts.as_slice(), &self.structured_content) {
            ([], Some(v)) => v.to_string(),
            (texts, _) => texts.join("\n"),
        }
    }

    /// Consumes the output into [`text`](Self::text),
    /// without a copy for a single text block.
    pub fn into_text(mut self) -> String {
        if self.content.len() == 1 {
            if let Content::Text { text } = &mut self.content[0] {
                return std::mem::take(text);
            }
        }
        self.text()
    }
}

/// An output equals a string when it is exactly one text block with that
/// text and no structured content: what a native result is.
impl PartialEq<str> for ToolOutput {
    fn eq(&self, other: &str) -> bool {
        self.structured_content.is_none()
            && matches!(self.content.as_slice(), [Content::Text { text }] if text == other)
    }
}

impl PartialEq<&str> for ToolOutput {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

impl PartialEq<String> for ToolOutput {
    fn eq(&self, other: &String) -> bool {
        self == other.as_str()
    }
}

/// One content block of a [`ToolOutput`], as MCP defines them (JSON tagged
/// by `type`). Annotations and `_meta` are not kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Content {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image.
    Image {
        /// The image, base64-encoded.
        data: String,
        /// Its MIME type, such as `image/png`.
        #[serde(rename = "mimeType")]
        mime_type: String,
    },
    /// Audio.
    Audio {
        /// The audio, base64-encoded.
        data: String,
        /// Its MIME type, such as `audio/wav`.
        #[serde(rename = "mimeType")]
        mime_type: String,
    },
    /// A link to a resource the server can read: MCP's `resource_link`,
    /// its fields (`uri`, `name`, `mimeType`, ...) as JSON.
    ResourceLink(serde_json::Map<String, serde_json::Value>),
    /// A resource embedded in the result: MCP's `resource`, whose
    /// `resource` field holds `uri` and `text` or `blob`.
    Resource {
        /// The resource's contents, as JSON.
        resource: serde_json::Value,
    },
}

/// Arguments a tool cannot take: for an MCP server, arguments that are not
/// a JSON object. Refused before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tool `{tool}`: {problem}")]
pub struct BadArguments {
    /// The tool's name (as the service knows it).
    pub tool: String,
    /// What is wrong with them.
    pub problem: String,
}
