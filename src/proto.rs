//! The wire protocol's messages, generated from `proto/ext.proto`.
//!
//! Every frame is a 4-byte big-endian length followed by one protobuf message.
//! The host sends [`ExtRequest`]s; the extension answers each with exactly one
//! [`ExtResponse`], in order, except `shutdown`, which gets no answer. The
//! field numbers are fixed: existing extensions depend on them.
//!
//! The generated types nest each message in a `oneof`; the constructors here
//! build them without spelling out the nesting.
//!
//! Both messages also carry an optional `correlation_id` (field 1000,
//! outside the `oneof`): the host's connection numbers every request, and
//! [`crate::server`] copies the number into the answer, so the host can
//! check that an answer belongs to the request it is matched with. Older
//! extensions ignore the field and are matched by order alone.
//!
//! # Example
//!
//! ```
//! use exthost::proto::{ExtRequest, ExtResponse, RequestKind};
//!
//! let req = ExtRequest::tool_call("echo", r#"{"x":1}"#);
//! assert_eq!(req.kind(), RequestKind::ToolCall);
//! assert_eq!(req.tool_name(), Some("echo"));
//!
//! let resp = ExtResponse::tool_result("done");
//! assert_eq!(resp.kind_name(), "tool_result");
//! ```

#![allow(missing_docs, clippy::doc_markdown)]

include!(concat!(env!("OUT_DIR"), "/exthost.ext.rs"));

use std::fmt;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: &str = "0.2";

/// What an [`ExtRequest`] asks for, without its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `hello`: the first step of the handshake.
    Hello,
    /// `register_tools`: asks for the tool schemas.
    RegisterTools,
    /// `tool_call`: runs one tool.
    ToolCall,
    /// `service_query`: a free-form query to the service.
    ServiceQuery,
    /// `shutdown`: asks the extension to exit; it gets no answer.
    Shutdown,
    /// `configure`: hands the service its configuration.
    Configure,
    /// `get_schema`: asks for the configuration's JSON Schema.
    GetSchema,
    /// A request with no message set.
    Empty,
}

impl RequestKind {
    /// The request's field name in the protocol, such as `"tool_call"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RequestKind::Hello => "hello",
            RequestKind::RegisterTools => "register_tools",
            RequestKind::ToolCall => "tool_call",
            RequestKind::ServiceQuery => "service_query",
            RequestKind::Shutdown => "shutdown",
            RequestKind::Configure => "configure",
            RequestKind::GetSchema => "get_schema",
            RequestKind::Empty => "empty",
        }
    }
}

impl RequestKind {
    /// Whether this is a step of the handshake: `hello`, `configure` or
    /// `register_tools`.
    pub fn is_handshake(self) -> bool {
        matches!(
            self,
            RequestKind::Hello | RequestKind::Configure | RequestKind::RegisterTools
        )
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an [`ExtResponse`] answers with, without its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseKind {
    /// `ready`: the answer to `hello`.
    Ready,
    /// `tool_schemas`: the answer to `register_tools`.
    ToolSchemas,
    /// `tool_result`: the answer to `tool_call`.
    ToolResult,
    /// `service_query_result`: the answer to `service_query`.
    ServiceQueryResult,
    /// `error`: a refusal, a valid answer to any request.
    Error,
    /// `configured`: the answer to `configure`.
    Configured,
    /// `schema_result`: the answer to `get_schema`.
    SchemaResult,
    /// A response with no message set.
    Empty,
}

impl ResponseKind {
    /// The response's field name in the protocol, such as `"tool_result"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseKind::Ready => "ready",
            ResponseKind::ToolSchemas => "tool_schemas",
            ResponseKind::ToolResult => "tool_result",
            ResponseKind::ServiceQueryResult => "service_query_result",
            ResponseKind::Error => "error",
            ResponseKind::Configured => "configured",
            ResponseKind::SchemaResult => "schema_result",
            ResponseKind::Empty => "empty",
        }
    }

    /// Whether this kind of response answers a `request` request: its
    /// own kind of answer, or an `error`, which answers any request.
    pub fn answers(self, request: RequestKind) -> bool {
        matches!(
            (request, self),
            (_, ResponseKind::Error)
                | (RequestKind::Hello, ResponseKind::Ready)
                | (RequestKind::RegisterTools, ResponseKind::ToolSchemas)
                | (RequestKind::ToolCall, ResponseKind::ToolResult)
                | (RequestKind::ServiceQuery, ResponseKind::ServiceQueryResult)
                | (RequestKind::Configure, ResponseKind::Configured)
                | (RequestKind::GetSchema, ResponseKind::SchemaResult)
        )
    }
}

impl fmt::Display for ResponseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ExtRequest {
    fn of(msg: ext_request::Msg) -> Self {
        ExtRequest {
            msg: Some(msg),
            correlation_id: None,
        }
    }

    /// `hello` with the given protocol version.
    pub fn hello(version: impl Into<String>) -> Self {
        Self::of(ext_request::Msg::Hello(ExtHello {
            version: version.into(),
        }))
    }

    /// `register_tools`.
    pub fn register_tools() -> Self {
        Self::of(ext_request::Msg::RegisterTools(ExtRegisterTools {}))
    }

    /// `tool_call` with a tool name and its JSON arguments; no agent, no task.
    pub fn tool_call(name: impl Into<String>, args: impl Into<String>) -> Self {
        Self::of(ext_request::Msg::ToolCall(ExtToolCall {
            name: name.into(),
            args: args.into(),
            agent: String::new(),
            task_id: None,
        }))
    }

    /// `tool_call` with every field.
    pub fn tool_call_full(
        name: impl Into<String>,
        args: impl Into<String>,
        agent: impl Into<String>,
        task_id: Option<u64>,
    ) -> Self {
        Self::of(ext_request::Msg::ToolCall(ExtToolCall {
            name: name.into(),
            args: args.into(),
            agent: agent.into(),
            task_id,
        }))
    }

    /// `service_query`.
    pub fn service_query(query: impl Into<String>) -> Self {
        Self::of(ext_request::Msg::ServiceQuery(ExtServiceQuery {
            query: query.into(),
        }))
    }

    /// `shutdown`.
    pub fn shutdown() -> Self {
        Self::of(ext_request::Msg::Shutdown(ExtShutdown {}))
    }

    /// `configure` with the service's configuration as JSON text.
    pub fn configure(config: impl Into<String>) -> Self {
        Self::of(ext_request::Msg::Configure(ExtConfigure {
            config: config.into(),
        }))
    }

    /// `get_schema`.
    pub fn get_schema() -> Self {
        Self::of(ext_request::Msg::GetSchema(ExtGetSchema {}))
    }

    /// What this request asks for.
    pub fn kind(&self) -> RequestKind {
        match &self.msg {
            Some(ext_request::Msg::Hello(_)) => RequestKind::Hello,
            Some(ext_request::Msg::RegisterTools(_)) => RequestKind::RegisterTools,
            Some(ext_request::Msg::ToolCall(_)) => RequestKind::ToolCall,
            Some(ext_request::Msg::ServiceQuery(_)) => RequestKind::ServiceQuery,
            Some(ext_request::Msg::Shutdown(_)) => RequestKind::Shutdown,
            Some(ext_request::Msg::Configure(_)) => RequestKind::Configure,
            Some(ext_request::Msg::GetSchema(_)) => RequestKind::GetSchema,
            None => RequestKind::Empty,
        }
    }

    /// The tool call inside, if this is one.
    pub fn as_tool_call(&self) -> Option<&ExtToolCall> {
        match &self.msg {
            Some(ext_request::Msg::ToolCall(call)) => Some(call),
            _ => None,
        }
    }

    /// The tool's name, if this is a tool call.
    pub fn tool_name(&self) -> Option<&str> {
        self.as_tool_call().map(|c| c.name.as_str())
    }

    /// Whether the protocol expects an answer to this request (all but `shutdown`).
    pub fn expects_response(&self) -> bool {
        self.kind() != RequestKind::Shutdown
    }
}

impl ExtResponse {
    fn of(msg: ext_response::Msg) -> Self {
        ExtResponse {
            msg: Some(msg),
            correlation_id: None,
        }
    }

    /// `ready` with a protocol version, a service name and capabilities.
    pub fn ready(
        version: impl Into<String>,
        service: impl Into<String>,
        capabilities: Vec<Capability>,
    ) -> Self {
        Self::of(ext_response::Msg::Ready(ExtReady {
            version: version.into(),
            service: service.into(),
            capabilities,
        }))
    }

    /// `tool_schemas`.
    pub fn tool_schemas(tools: Vec<ToolDef>) -> Self {
        Self::of(ext_response::Msg::ToolSchemas(ExtToolSchemas { tools }))
    }

    /// `tool_result`.
    pub fn tool_result(result: impl Into<String>) -> Self {
        Self::of(ext_response::Msg::ToolResult(ExtToolResult {
            result: result.into(),
        }))
    }

    /// `service_query_result`.
    pub fn service_query_result(result: impl Into<String>) -> Self {
        Self::of(ext_response::Msg::ServiceQueryResult(
            ExtServiceQueryResult {
                result: result.into(),
            },
        ))
    }

    /// `error` with the extension's message.
    pub fn error(message: impl Into<String>) -> Self {
        Self::of(ext_response::Msg::Error(ExtError {
            message: message.into(),
        }))
    }

    /// `configured`.
    pub fn configured() -> Self {
        Self::of(ext_response::Msg::Configured(ExtConfigured {}))
    }

    /// `schema_result` with the configuration's JSON Schema.
    pub fn schema_result(schema: impl Into<String>) -> Self {
        Self::of(ext_response::Msg::SchemaResult(ExtSchemaResult {
            schema: schema.into(),
        }))
    }

    /// What this response is, without its payload.
    pub fn kind(&self) -> ResponseKind {
        match &self.msg {
            Some(ext_response::Msg::Ready(_)) => ResponseKind::Ready,
            Some(ext_response::Msg::ToolSchemas(_)) => ResponseKind::ToolSchemas,
            Some(ext_response::Msg::ToolResult(_)) => ResponseKind::ToolResult,
            Some(ext_response::Msg::ServiceQueryResult(_)) => ResponseKind::ServiceQueryResult,
            Some(ext_response::Msg::Error(_)) => ResponseKind::Error,
            Some(ext_response::Msg::Configured(_)) => ResponseKind::Configured,
            Some(ext_response::Msg::SchemaResult(_)) => ResponseKind::SchemaResult,
            None => ResponseKind::Empty,
        }
    }

    /// The response's field name in the protocol, such as `"tool_result"`,
    /// or `"empty"` when no message is set.
    pub fn kind_name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The extension's error message, if this is an `error` response.
    pub fn error_message(&self) -> Option<&str> {
        match &self.msg {
            Some(ext_response::Msg::Error(e)) => Some(&e.message),
            _ => None,
        }
    }
}

impl Capability {
    /// The `tools` capability, naming the tools offered.
    pub fn tools<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Capability {
            cap: Some(capability::Cap::Tools(ToolsList {
                names: names.into_iter().map(Into::into).collect(),
            })),
        }
    }

    /// The `query` capability: the service answers `service_query`.
    pub fn query() -> Self {
        Capability {
            cap: Some(capability::Cap::Query(QueryCap {})),
        }
    }
}
