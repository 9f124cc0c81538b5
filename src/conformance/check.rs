use std::fmt;

/// One conformance check. [`Check::ALL`] lists them in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Check {
    /// The program starts and accepts a connection on its socket in time.
    Socket,
    /// `hello` is answered with `ready`.
    Hello,
    /// The version in `ready` is compatible with this host's.
    Version,
    /// `configure` is answered with `configured`.
    Configure,
    /// `register_tools` is answered with `tool_schemas`.
    RegisterTools,
    /// The `tools` capability names exactly the tools that have schemas.
    ToolsMatch,
    /// Every tool's `parameters` is a valid JSON Schema object whose
    /// top-level `type` is `"object"` or absent (see
    /// [`SchemaProblem`](crate::SchemaProblem)): what LLM APIs accept.
    Schemas,
    /// Every tool name fits `^[a-zA-Z0-9_-]{1,64}$` (what common LLM APIs
    /// accept), is declared once, and every tool has a description.
    ToolNames,
    /// `get_schema` is answered with a `schema_result` holding JSON.
    GetSchema,
    /// With the `query` capability, `service_query` is answered without an
    /// error; passes for an extension without it.
    Query,
    /// A call of a tool the extension does not offer is answered with an
    /// `error`.
    UnknownTool,
    /// Answers carry their request's correlation id, so that an answer out
    /// of place is detected even when requests are pipelined.
    CorrelationIds,
    /// After `shutdown` the extension goes away in time: the program exits
    /// and removes its socket (or, over a stream, closes the connection).
    Shutdown,
}

/// How much a [`Check`] matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// The host cannot use an extension that fails it.
    Required,
    /// The host works with an extension that fails it, with less safety or
    /// less information; strict checking makes it count as required.
    Recommended,
}

impl Check {
    /// Every check, in the order they run.
    pub const ALL: &'static [Check] = &[
        Check::Socket,
        Check::Hello,
        Check::Version,
        Check::Configure,
        Check::RegisterTools,
        Check::ToolsMatch,
        Check::Schemas,
        Check::ToolNames,
        Check::GetSchema,
        Check::Query,
        Check::UnknownTool,
        Check::CorrelationIds,
        Check::Shutdown,
    ];

    /// The check's name, as `exthost check` prints it, such as
    /// `"register_tools"`.
    pub const fn name(self) -> &'static str {
        match self {
            Check::Socket => "socket",
            Check::Hello => "hello",
            Check::Version => "version",
            Check::Configure => "configure",
            Check::RegisterTools => "register_tools",
            Check::ToolsMatch => "tools_match",
            Check::Schemas => "schemas",
            Check::ToolNames => "tool_names",
            Check::GetSchema => "get_schema",
            Check::Query => "query",
            Check::UnknownTool => "unknown_tool",
            Check::CorrelationIds => "correlation_ids",
            Check::Shutdown => "shutdown",
        }
    }

    /// Whether the check is required or recommended.
    pub const fn level(self) -> Level {
        match self {
            Check::GetSchema | Check::Query | Check::UnknownTool | Check::CorrelationIds => {
                Level::Recommended
            }
            _ => Level::Required,
        }
    }

    /// Whether the check is [`Level::Required`].
    pub const fn is_required(self) -> bool {
        matches!(self.level(), Level::Required)
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
