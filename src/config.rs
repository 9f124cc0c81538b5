//! Service configuration: what a `[services.<name>]` entry holds.
//!
//! [`ServiceConfig`] keeps the reference's fields and serde names
//! (`description`, `kind`, `crate` (alias `krate`), `restart`, `enabled`,
//! `env`, `config`) and adds `command`, `args`, `call_timeout`,
//! `handshake_timeout`, `shutdown_grace`, `stuck_margin` (durations as
//! `"500ms"`, `"10s"`), `max_in_flight` and `max_queued`, and the
//! confinement settings: `sha256`, `tools` ([`ToolFilter`]), `inherit_env`,
//! `env_pass`, `limits` ([`Limits`]) and `sandbox` ([`Sandbox`]; see the
//! README's "Confinement"). [`HostConfig`] is a whole file: optional
//! `services_dir`, `logs_dir` and `daemon_socket`, and the services, loaded
//! from TOML or JSON (a byte-order mark accepted in both). Every error
//! names the service and the field, and, loaded from a file, the file and
//! the line and column wherever the text has one.
//!
//! # Example
//!
//! ```
//! use exthost::config::{HostConfig, RestartPolicy};
//!
//! let cfg = HostConfig::from_toml_str(r#"
//!     [services.search]
//!     crate = "search-ext"
//!     restart = "on_failure"
//!     call_timeout = "5s"
//!     config = { index = "docs" }
//! "#)?;
//! let search = &cfg.services["search"];
//! assert_eq!(search.krate, "search-ext");
//! assert_eq!(search.restart, RestartPolicy::OnFailure);
//! assert_eq!(search.call_timeout(), std::time::Duration::from_secs(5));
//! # Ok::<(), exthost::config::ConfigError>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod clients;
mod confine;
mod expand;

pub use confine::{ByteSize, Limits, Sandbox, ToolFilter};

use crate::handshake::DEFAULT_HANDSHAKE_TIMEOUT;
use crate::stack::DEFAULT_CALL_TIMEOUT;

/// The default size cap of a service's log file: 10 MiB.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// The default number of rotated log files kept per service: 3.
pub const DEFAULT_LOG_KEEP: usize = 3;

/// The default in-flight limit of an MCP service: 16.
pub const DEFAULT_MCP_MAX_IN_FLIGHT: usize = 16;

/// The default time a stopping extension gets at each stage of shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What kind of service a process is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    /// Serves the extension protocol on a socket the host gives it.
    #[default]
    Extension,
    /// Connects back to the daemon's socket; spawned and supervised, not
    /// handshaken.
    Gateway,
    /// A Model Context Protocol server: spawned from `command` and spoken
    /// to over its stdin and stdout, or reached at `url` over Streamable
    /// HTTP. Needs the `mcp` feature to start.
    Mcp,
}

/// When a service that stopped is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Never.
    #[default]
    Never,
    /// After a non-zero exit, a crash or a lost connection.
    OnFailure,
    /// Whenever it stops, unless the host is shutting it down.
    Always,
}

/// Which tool names the host advertises (the host-level `tool_names`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolNames {
    /// Only names that fit `^[a-zA-Z0-9_-]{1,64}$` (the default): LLM APIs
    /// refuse a whole request when one tool name does not, so one bad name
    /// from one extension would break every request of the agent.
    #[default]
    Portable,
    /// Any name but the empty one and those with control characters, for
    /// models that accept them.
    Any,
}

/// One `[services.<name>]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// What the service is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Extension or gateway.
    #[serde(default)]
    pub kind: ServiceKind,
    /// The binary's name, looked up in `$HOME/.cargo/bin`, then on `PATH`.
    #[serde(rename = "crate", alias = "krate", default)]
    pub krate: String,
    /// The binary; wins over `crate`. A path (with a `/`) is used as is
    /// (relative to the configuration file's folder when loaded from a
    /// file); a bare name is looked up on the service's own `env.PATH`,
    /// else the host's `PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<PathBuf>,
    /// A remote MCP server's Streamable HTTP endpoint (`http://` or
    /// `https://`), for `kind = "mcp"` instead of `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// HTTP headers sent with every request to `url` (an
    /// `Authorization` header, say).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Prepended to each of the service's tool names as the agent sees
    /// them (`prefix = "gh_"` makes `create_issue` into
    /// `gh_create_issue`); the service still receives its own names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The working directory of the service's process (default: the
    /// host's). Relative to the configuration file's folder when loaded
    /// from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Extra arguments, after the protocol's own (for an MCP server, its
    /// whole argument list: nothing is added).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// When to restart the service.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Whether to start the service at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Environment variables for the process.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The service's own configuration, sent in `configure`.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Deadline of each call (default 30 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub call_timeout: Option<Duration>,
    /// Time allowed for start-up and each handshake step (default 10 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub handshake_timeout: Option<Duration>,
    /// Time allowed at each stage of shutdown (default 5 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub shutdown_grace: Option<Duration>,
    /// Answers the extension may owe at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// How long past its call timeout a request may stay unanswered before
    /// the connection counts as stuck and is reset (default 5 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub stuck_margin: Option<Duration>,
    /// How many calls may wait for an in-flight slot at once; a call beyond
    /// that fails at once as `overloaded` (never sent, safe to retry).
    /// Default: no bound (each waits within its call timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<usize>,
    /// After the crash-loop breaker leaves the service failed, try again
    /// after this long (default: never; an operator's `restart` or `start`
    /// always does).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub breaker_cooldown: Option<Duration>,
    /// The size cap of the service's log file, in bytes: past it the file
    /// is rotated (default 10 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_max_bytes: Option<u64>,
    /// How many rotated log files are kept (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_keep: Option<usize>,
    /// The SHA-256 of the binary, 64 hexadecimal digits: checked before
    /// every spawn and restart, on the very file then executed. Not for
    /// `#!` scripts (refused: the interpreter would open the script again
    /// by path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Which of the service's own tool names are registered.
    #[serde(
        default,
        deserialize_with = "confine::optional_table",
        skip_serializing_if = "Option::is_none"
    )]
    pub tools: Option<ToolFilter>,
    /// Whether the process inherits the host's whole environment (the
    /// default). False: only `PATH`, `HOME`, `LANG`, `TZ` and `RUST_LOG`
    /// (those set), the variables named in `env_pass`, and `env`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub inherit_env: bool,
    /// Host variables passed through when `inherit_env = false`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_pass: Vec<String>,
    /// Resource limits of the process.
    #[serde(
        default,
        deserialize_with = "confine::table",
        skip_serializing_if = "Limits::is_empty"
    )]
    pub limits: Limits,
    /// A Landlock sandbox for the process.
    #[serde(
        default,
        deserialize_with = "confine::optional_table",
        skip_serializing_if = "Option::is_none"
    )]
    pub sandbox: Option<Sandbox>,
}

fn is_true(b: &bool) -> bool {
    *b
}

fn yes() -> bool {
    true
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            description: None,
            kind: ServiceKind::Extension,
            krate: String::new(),
            command: None,
            url: None,
            headers: BTreeMap::new(),
            prefix: None,
            cwd: None,
            args: Vec::new(),
            restart: RestartPolicy::Never,
            enabled: true,
            env: BTreeMap::new(),
            config: empty_object(),
            call_timeout: None,
            handshake_timeout: None,
            shutdown_grace: None,
            max_in_flight: None,
            stuck_margin: None,
            max_queued: None,
            breaker_cooldown: None,
            log_max_bytes: None,
            log_keep: None,
            sha256: None,
            tools: None,
            inherit_env: true,
            env_pass: Vec::new(),
            limits: Limits::default(),
            sandbox: None,
        }
    }
}

impl ServiceConfig {
    /// An extension run from an explicit binary path.
    pub fn command(path: impl Into<PathBuf>) -> Self {
        ServiceConfig {
            command: Some(path.into()),
            ..Default::default()
        }
    }

    /// An MCP server run as a child process: `command` with `args`,
    /// exactly as given, speaking MCP over its stdin and stdout.
    pub fn mcp_command(
        command: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        ServiceConfig {
            kind: ServiceKind::Mcp,
            command: Some(command.into()),
            args: args.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    /// A remote MCP server at a Streamable HTTP endpoint.
    pub fn mcp_url(url: impl Into<String>) -> Self {
        ServiceConfig {
            kind: ServiceKind::Mcp,
            url: Some(url.into()),
            ..Default::default()
        }
    }

    /// Sets the tool-name prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// An extension whose binary is found by name.
    pub fn krate(name: impl Into<String>) -> Self {
        ServiceConfig {
            krate: name.into(),
            ..Default::default()
        }
    }

    /// Sets an environment variable.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets the restart policy.
    pub fn with_restart(mut self, restart: RestartPolicy) -> Self {
        self.restart = restart;
        self
    }

    /// Sets the call timeout.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    /// Sets the handshake timeout.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// Sets the shutdown grace period.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = Some(grace);
        self
    }

    /// Sets the in-flight limit.
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n);
        self
    }

    /// Sets how many calls may wait for an in-flight slot.
    pub fn with_max_queued(mut self, n: usize) -> Self {
        self.max_queued = Some(n);
        self
    }

    /// The size cap of the log file, in bytes.
    pub fn log_max_bytes(&self) -> u64 {
        self.log_max_bytes.unwrap_or(DEFAULT_LOG_MAX_BYTES)
    }

    /// How many rotated log files are kept.
    pub fn log_keep(&self) -> usize {
        self.log_keep.unwrap_or(DEFAULT_LOG_KEEP)
    }

    /// Sets the log's size cap and how many rotated files are kept.
    pub fn with_log_limits(mut self, max_bytes: u64, keep: usize) -> Self {
        self.log_max_bytes = Some(max_bytes);
        self.log_keep = Some(keep);
        self
    }

    /// Sets the breaker's cooldown.
    pub fn with_breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = Some(cooldown);
        self
    }

    /// Pins the binary to a SHA-256 (64 hexadecimal digits).
    pub fn with_sha256(mut self, hash: impl Into<String>) -> Self {
        self.sha256 = Some(hash.into());
        self
    }

    /// Sets which tools are registered.
    pub fn with_tools(mut self, filter: ToolFilter) -> Self {
        self.tools = Some(filter);
        self
    }

    /// Starts the process with a minimal environment (`inherit_env =
    /// false`), plus the host variables `pass` names.
    pub fn with_clean_env(mut self, pass: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.inherit_env = false;
        self.env_pass = pass.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the resource limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the Landlock sandbox.
    pub fn with_sandbox(mut self, sandbox: Sandbox) -> Self {
        self.sandbox = Some(sandbox);
        self
    }

    /// Sets the stuck margin.
    pub fn with_stuck_margin(mut self, margin: Duration) -> Self {
        self.stuck_margin = Some(margin);
        self
    }

    /// The stuck margin in force.
    pub fn stuck_margin(&self) -> Duration {
        self.stuck_margin
            .unwrap_or(crate::stack::DEFAULT_STUCK_MARGIN)
    }

    /// Sets the service's own configuration.
    pub fn with_config(mut self, config: serde_json::Value) -> Self {
        self.config = config;
        self
    }

    /// The call timeout in force.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout.unwrap_or(DEFAULT_CALL_TIMEOUT)
    }

    /// The handshake timeout in force.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT)
    }

    /// The shutdown grace period in force.
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE)
    }

    /// The in-flight limit in force: 1 for native extensions (answers are
    /// matched by order), 16 for MCP servers (matched by request id).
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.unwrap_or(match self.kind {
            ServiceKind::Mcp => DEFAULT_MCP_MAX_IN_FLIGHT,
            _ => 1,
        })
    }

    /// `tools` split into those the `tools` filter keeps and the names of
    /// those it hides (none without a filter).
    pub fn filter_tools(
        &self,
        tools: Vec<crate::tool::Tool>,
    ) -> (Vec<crate::tool::Tool>, Vec<String>) {
        match &self.tools {
            Some(filter) => filter.apply(tools),
            None => (tools, Vec::new()),
        }
    }

    /// Warns about each `tools` pattern of service `name` that matches
    /// none of `tools` (the service's own list, before any `prefix`).
    pub(crate) fn warn_unmatched_tool_patterns(&self, name: &str, tools: &[crate::tool::Tool]) {
        let Some(filter) = &self.tools else { return };
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        for pattern in filter.unmatched(&names) {
            tracing::warn!(service = %name, pattern = %pattern, "a `tools` pattern matches none of the service's tools (patterns match its own names, before any `prefix`)");
        }
    }

    /// Checks the entry named `name`.
    pub fn validate(&self, name: &str) -> Result<(), ConfigError> {
        validate_name(name)?;
        let field = |field: &'static str, problem: String| ConfigError::Invalid {
            service: name.to_owned(),
            field,
            problem,
        };
        if self.kind == ServiceKind::Mcp {
            if !self.krate.is_empty() {
                return Err(field(
                    "crate",
                    "is not used by MCP services: give the server's `command` (and `args`)"
                        .to_owned(),
                ));
            }
            if self.config.as_object().is_none_or(|o| !o.is_empty()) {
                return Err(field(
                    "config",
                    "is not used by MCP services (they have no `configure`): pass settings in `args` or `env`".to_owned(),
                ));
            }
            match (&self.command, &self.url) {
                (Some(_), Some(_)) => {
                    return Err(field(
                        "url",
                        "and `command` are both given; an MCP service has one of them".to_owned(),
                    ))
                }
                (None, None) => return Err(field(
                    "command",
                    "is missing: an MCP service needs `command` (stdio) or `url` (Streamable HTTP)"
                        .to_owned(),
                )),
                (None, Some(url)) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(field(
                            "url",
                            format!("must start with http:// or https://, not {url:?}"),
                        ));
                    }
                }
                (Some(command), None) => {
                    if command.as_os_str().is_empty() {
                        return Err(field("command", "is empty".to_owned()));
                    }
                    if !self.headers.is_empty() {
                        return Err(field(
                            "headers",
                            "apply only to a `url`, and this service has a `command`".to_owned(),
                        ));
                    }
                }
            }
        } else if self.url.is_some() || !self.headers.is_empty() {
            return Err(field(
                if self.url.is_some() { "url" } else { "headers" },
                "is only for `kind = \"mcp\"`".to_owned(),
            ));
        } else if self
            .command
            .as_ref()
            .is_some_and(|c| c.as_os_str().is_empty())
        {
            return Err(field(
                "command",
                "is empty: give a path or a binary name".to_owned(),
            ));
        } else if self.command.is_none() && self.krate.trim().is_empty() {
            return Err(field(
                "crate",
                "is empty and no `command` is given".to_owned(),
            ));
        }
        if self.krate.contains('/') {
            return Err(field(
                "crate",
                "must be a binary name; use `command` for a path".to_owned(),
            ));
        }
        if self.log_max_bytes == Some(0) {
            return Err(field("log_max_bytes", "must be at least 1".to_owned()));
        }
        if self.max_in_flight == Some(0) {
            return Err(field("max_in_flight", "must be at least 1".to_owned()));
        }
        for (f, d) in [
            ("call_timeout", self.call_timeout),
            ("handshake_timeout", self.handshake_timeout),
        ] {
            if d == Some(Duration::ZERO) {
                return Err(field(f, "must be longer than zero".to_owned()));
            }
        }
        self.validate_confinement(&field)
    }

    /// Checks `sha256`, `tools`, `env_pass`, `limits` and `sandbox`.
    fn validate_confinement(
        &self,
        field: &dyn Fn(&'static str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if let Some(hash) = &self.sha256 {
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(field(
                    "sha256",
                    format!("must be 64 hexadecimal digits, not {hash:?}"),
                ));
            }
        }
        if let Some(tools) = &self.tools {
            tools.compile().map_err(|(f, problem)| field(f, problem))?;
        }
        if !self.env_pass.is_empty() && self.inherit_env {
            return Err(field(
                "env_pass",
                "applies only with `inherit_env = false` (the whole environment is passed)"
                    .to_owned(),
            ));
        }
        if let Some(bad) = self
            .env_pass
            .iter()
            .find(|v| v.is_empty() || v.contains('='))
        {
            return Err(field(
                "env_pass",
                format!("names a variable {bad:?}, which is not a variable name"),
            ));
        }
        let l = &self.limits;
        for (f, zero) in [
            ("limits.memory", l.memory.is_some_and(|m| m.0 == 0)),
            ("limits.file_size", l.file_size.is_some_and(|m| m.0 == 0)),
            ("limits.open_files", l.open_files == Some(0)),
            ("limits.processes", l.processes == Some(0)),
        ] {
            if zero {
                return Err(field(f, "must be at least 1".to_owned()));
            }
        }
        if let Some(t) = l.cpu_time {
            // RLIMIT_CPU counts whole seconds: refused rather than rounded.
            if t.as_secs() == 0 || t.subsec_nanos() != 0 {
                return Err(field(
                    "limits.cpu_time",
                    format!(
                        "must be a whole number of seconds, at least 1 (RLIMIT_CPU counts seconds), not {}",
                        humantime_serde::re::humantime::format_duration(t)
                    ),
                ));
            }
        }
        if let Some(sandbox) = &self.sandbox {
            for (f, paths) in [
                ("sandbox.read", &sandbox.read),
                ("sandbox.write", &sandbox.write),
            ] {
                if let Some(p) = paths.iter().find(|p| !p.is_absolute()) {
                    return Err(field(
                        f,
                        format!("must hold absolute paths, not {}", p.display()),
                    ));
                }
            }
        }
        if self.kind == ServiceKind::Mcp && self.url.is_some() {
            let process_only = [
                ("sha256", self.sha256.is_some()),
                ("inherit_env", !self.inherit_env),
                ("limits", !self.limits.is_empty()),
                ("sandbox", self.sandbox.is_some()),
            ];
            if let Some((f, _)) = process_only.iter().find(|(_, set)| *set) {
                return Err(field(
                    f,
                    "applies to a process exthost spawns, and this service is a remote `url`"
                        .to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a service name: 1 to 64 of `A-Z a-z 0-9 _ -`. Names become file
/// names, so nothing else is allowed.
pub fn validate_name(name: &str) -> Result<(), ConfigError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadName {
            name: name.to_owned(),
        })
    }
}

/// A whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HostConfig {
    /// Where the sockets go (default: a private per-user runtime folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services_dir: Option<PathBuf>,
    /// Where the per-service log files go (default: a `logs` folder beside
    /// `services_dir` when that is set, else the private per-user runtime
    /// folder's; see [`Paths::for_host`](crate::process::Paths::for_host)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_dir: Option<PathBuf>,
    /// The daemon's socket, passed to gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_socket: Option<PathBuf>,
    /// Which tool names are advertised: `portable` (the default: only
    /// `^[a-zA-Z0-9_-]{1,64}$`) or `any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_names: Option<ToolNames>,
    /// The services, by name.
    #[serde(default, deserialize_with = "unique_services")]
    pub services: BTreeMap<String, ServiceConfig>,
}

/// Deserializes the services map, refusing a name given twice (JSON would
/// otherwise keep the last silently).
fn unique_services<'de, D>(de: D) -> Result<BTreeMap<String, ServiceConfig>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Visitor;

    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = BTreeMap<String, ServiceConfig>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a table of services")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut services = BTreeMap::new();
            while let Some(name) = map.next_key::<String>()? {
                if services.contains_key(&name) {
                    return Err(serde::de::Error::custom(format!(
                        "service `{name}` is defined twice"
                    )));
                }
                let config = map.next_value()?;
                services.insert(name, config);
            }
            Ok(services)
        }
    }

    de.deserialize_map(Visitor)
}

/// A configuration that cannot be used.
///
/// Every error names the field (`at`, or the service and the field); one
/// from [`HostConfig::load`] names the file too, and the line and column
/// wherever the text has one: `file:line:column: ` opens its text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The text does not parse, or a field has the wrong type or value.
    #[error("{}invalid configuration at `{at}`: {message}", where_(file.as_deref(), *line, *column))]
    Parse {
        /// Where: the field path, such as `services.search.call_timeout`
        /// (for a syntax error, the table and key of the line it is on).
        at: String,
        /// What is wrong.
        message: String,
        /// The file, when it was read from one.
        file: Option<PathBuf>,
        /// The line (from 1), where the error has one.
        line: Option<usize>,
        /// The column (from 1, in characters), where the error has one.
        column: Option<usize>,
    },
    /// A service name is not usable.
    #[error("invalid service name {name:?}: use 1 to 64 of A-Z, a-z, 0-9, `_` and `-`")]
    BadName {
        /// The name.
        name: String,
    },
    /// `${VAR}` in a field names a variable that is not set in the host's
    /// environment and gives no default (`${VAR:-default}`), or is
    /// malformed.
    #[error("service `{service}`: field `{field}` uses {var}, which {problem}")]
    Variable {
        /// The service.
        service: String,
        /// The field, such as `env.TOKEN` or `args[2]`.
        field: String,
        /// The reference as written, such as `${TOKEN}`.
        var: String,
        /// What is wrong: not set, or malformed.
        problem: &'static str,
    },
    /// A field's value is not usable.
    #[error("service `{service}`: field `{field}` {problem}")]
    Invalid {
        /// The service.
        service: String,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// Another error ([`BadName`](Self::BadName),
    /// [`Invalid`](Self::Invalid)) with where it is in the text: the file,
    /// and the line and column of the field.
    /// [`innermost`](ConfigError::innermost) gives the error itself.
    #[error("{}{source}", where_(file.as_deref(), *line, *column))]
    Located {
        /// The file, when it was read from one.
        file: Option<PathBuf>,
        /// The line (from 1) of the field, when it is found.
        line: Option<usize>,
        /// The column (from 1, in characters) of the field.
        column: Option<usize>,
        /// The error.
        #[source]
        source: Box<ConfigError>,
    },
}

/// `file:line:column: `, with what is known.
fn where_(file: Option<&Path>, line: Option<usize>, column: Option<usize>) -> String {
    let mut at = String::new();
    if let Some(file) = file {
        at += &file.display().to_string();
        at.push(':');
    }
    if let Some(line) = line {
        at += &line.to_string();
        at.push(':');
        if let Some(column) = column {
            at += &column.to_string();
            at.push(':');
        }
    }
    if !at.is_empty() {
        at.push(' ');
    }
    at
}

impl ConfigError {
    /// The error without where it is: a [`Located`](Self::Located) error's
    /// own, any other error itself.
    pub fn innermost(&self) -> &ConfigError {
        match self {
            ConfigError::Located { source, .. } => source.innermost(),
            e => e,
        }
    }

    /// The file, line and column, where known.
    pub fn location(&self) -> (Option<&Path>, Option<usize>, Option<usize>) {
        match self {
            ConfigError::Parse {
                file, line, column, ..
            }
            | ConfigError::Located {
                file, line, column, ..
            } => (file.as_deref(), *line, *column),
            ConfigError::Read { path, .. } => (Some(path), None, None),
            _ => (None, None, None),
        }
    }

    /// The same error, naming `path` as its file.
    fn in_file(self, path: &Path) -> ConfigError {
        match self {
            ConfigError::Parse {
                at,
                message,
                line,
                column,
                ..
            } => ConfigError::Parse {
                at,
                message,
                file: Some(path.to_owned()),
                line,
                column,
            },
            ConfigError::Located {
                line,
                column,
                source,
                ..
            } => ConfigError::Located {
                file: Some(path.to_owned()),
                line,
                column,
                source,
            },
            e @ ConfigError::Read { .. } => e,
            e => ConfigError::Located {
                file: Some(path.to_owned()),
                line: None,
                column: None,
                source: Box::new(e),
            },
        }
    }
}

impl HostConfig {
    /// Parses TOML and validates every service. A UTF-8 byte-order mark
    /// at the start is ignored.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let de = toml::Deserializer::parse(text).map_err(|e| {
            let (line, column) = location::span_start(text, e.span());
            ConfigError::Parse {
                at: location::toml_field_at(text, line),
                message: e.message().to_owned(),
                file: None,
                line,
                column,
            }
        })?;
        let mut cfg: HostConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let (line, column) = location::span_start(text, e.inner().span());
            ConfigError::Parse {
                at: e.path().to_string(),
                message: e.inner().message().to_owned(),
                file: None,
                line,
                column,
            }
        })?;
        let locate = |e| {
            location::locate(
                e,
                |path| location::toml_offset(text, &location::under("services", path)),
                text,
            )
        };
        cfg.expand_env().map_err(locate)?;
        cfg.validate().map_err(locate)?;
        Ok(cfg)
    }

    /// Parses JSON and validates every service. A UTF-8 byte-order mark
    /// at the start is ignored.
    ///
    /// Besides exthost's own form, this reads the files MCP clients use: a
    /// top-level `mcpServers` object (Claude Desktop, Claude Code, Cursor)
    /// or `servers` (VS Code). Each entry is an MCP service: `{command,
    /// args, env, cwd}` (with `type` absent or `"stdio"`) runs a server
    /// over stdio; `{type, url, headers}` with type `http`,
    /// `streamable-http`, `streamable_http` or `streamableHttp` (or absent)
    /// reaches one over Streamable HTTP. Any other `type` (`sse`, say) is
    /// an error naming the service and the type; keys exthost does not use
    /// are ignored with a warning; `disabled: true` is `enabled = false`.
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let parse_error = |at: String, e: &serde_json::Error| {
            let (line, column) = match e.line() {
                0 => (None, None),
                line => (Some(line), Some(e.column())),
            };
            ConfigError::Parse {
                at: match at.as_str() {
                    "" | "." => "(top level)".to_owned(),
                    _ => at,
                },
                message: e.to_string(),
                file: None,
                line,
                column,
            }
        };
        // The whole text first, to its end: a syntax error, or anything
        // after the one value, is reported as it is whatever the form.
        let mut de = serde_json::Deserializer::from_str(text);
        let root: serde_json::Value = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| parse_error(e.path().to_string(), e.inner()))?;
        de.end().map_err(|e| parse_error(String::new(), &e))?;
        if let Some(key) = clients::client_key(&root) {
            let find = |path: &[location::Seg<'_>]| {
                location::json_offset(text, &location::under(key, path))
            };
            let (mut cfg, given) = clients::from_client_json(root, key, &|path| {
                find(path).map(|at| location::line_column(text, at))
            })
            .map_err(|e| location::locate(e, find, text))?;
            // Validation names services by their usable names; the text
            // by the names given.
            let locate = |e| {
                location::locate(
                    e,
                    |path| match path.split_first() {
                        Some((location::Seg::Key(name), rest)) => {
                            let name = given.get(*name).map_or(*name, String::as_str);
                            let mut path = vec![location::Seg::Key(name)];
                            path.extend_from_slice(rest);
                            find(&path)
                        }
                        _ => find(path),
                    },
                    text,
                )
            };
            cfg.expand_env().map_err(locate)?;
            cfg.validate().map_err(locate)?;
            return Ok(cfg);
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let mut cfg: HostConfig = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| parse_error(e.path().to_string(), e.inner()))?;
        let locate = |e| {
            location::locate(
                e,
                |path| location::json_offset(text, &location::under("services", path)),
                text,
            )
        };
        cfg.expand_env().map_err(locate)?;
        cfg.validate().map_err(locate)?;
        Ok(cfg)
    }

    /// Reads a file: JSON when its name ends in `.json`, TOML otherwise.
    /// The text may start with a byte-order mark: UTF-8 (ignored), or
    /// UTF-16 (decoded).
    ///
    /// Relative paths in it (`services_dir`, `logs_dir`, `daemon_socket`,
    /// and each service's `command` when it is a path, and `cwd`) are
    /// resolved against the file's folder, so that the file means the same
    /// from any working directory.
    ///
    /// # Errors
    ///
    /// Every error but [`ConfigError::Read`] names the file, and the line
    /// and column wherever the text has one.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = location::decode(&bytes).map_err(|e| e.in_file(path))?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            Self::from_json_str(&text)
        } else {
            Self::from_toml_str(&text)
        };
        let mut cfg = parsed.map_err(|e| e.in_file(path))?;
        let base = std::path::absolute(path)
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
            .unwrap_or_default();
        cfg.resolve_relative_to(&base);
        Ok(cfg)
    }

    /// Makes every relative path in the configuration relative to `base`
    /// (what [`load`](Self::load) does with the file's folder). A
    /// `command` without a `/` is a name to look up, and stays as it is.
    pub fn resolve_relative_to(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for dir in [
            &mut self.services_dir,
            &mut self.logs_dir,
            &mut self.daemon_socket,
        ]
        .into_iter()
        .flatten()
        {
            resolve(dir);
        }
        for service in self.services.values_mut() {
            if let Some(cmd) = &mut service.command {
                if cmd.components().count() > 1 {
                    resolve(cmd);
                }
            }
            if let Some(cwd) = &mut service.cwd {
                resolve(cwd);
            }
        }
    }

    /// Expands `${VAR}` and `${VAR:-default}` from the host's environment
    /// in each service's `args`, `env` values, `url` and `headers` values
    /// (what the loaders do). With `:-`, the default also applies to a
    /// variable set to the empty string.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Variable`] naming the service, the field and the
    /// variable, for one that is unset without a default, or malformed.
    pub fn expand_env(&mut self) -> Result<(), ConfigError> {
        self.expand_with(&|name| std::env::var(name).ok())
    }

    fn expand_with(&mut self, lookup: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for (name, service) in &mut self.services {
            let one = |field: String, value: &mut String| {
                *value = expand::expand(value, lookup).map_err(|e| {
                    let (var, problem) = match e {
                        expand::ExpandError::Unset(v) => {
                            (format!("${{{v}}}"), "is not set and has no default")
                        }
                        expand::ExpandError::Malformed(v) => {
                            (v, "is malformed: write ${NAME} or ${NAME:-default}")
                        }
                    };
                    ConfigError::Variable {
                        service: name.clone(),
                        field,
                        var,
                        problem,
                    }
                })?;
                Ok::<_, ConfigError>(())
            };
            for (i, arg) in service.args.iter_mut().enumerate() {
                one(format!("args[{i}]"), arg)?;
            }
            for (k, v) in service.env.iter_mut() {
                one(format!("env.{k}"), v)?;
            }
            if let Some(url) = &mut service.url {
                one("url".to_owned(), url)?;
            }
            for (k, v) in service.headers.iter_mut() {
                one(format!("headers.{k}"), v)?;
            }
        }
        Ok(())
    }

    /// Validates every service.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.services
            .iter()
            .try_for_each(|(name, svc)| svc.validate(name))
    }
}

/// Where things are in a configuration's text.
mod location {
    use std::ops::Range;

    use super::ConfigError;

    /// The text of a file's bytes: UTF-8, with or without a byte-order
    /// mark, or UTF-16 with one.
    pub(super) fn decode(bytes: &[u8]) -> Result<String, ConfigError> {
        let utf16 = |be: bool| {
            let units = bytes[2..].chunks(2).map(|c| match (c, be) {
                ([a, b], true) => u16::from_be_bytes([*a, *b]),
                ([a, b], false) => u16::from_le_bytes([*a, *b]),
                _ => 0xFFFD,
            });
            char::decode_utf16(units)
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect::<String>()
        };
        match bytes {
            [0xFF, 0xFE, ..] => Ok(utf16(false)),
            [0xFE, 0xFF, ..] => Ok(utf16(true)),
            _ => match std::str::from_utf8(bytes) {
                Ok(text) => Ok(text.strip_prefix('\u{feff}').unwrap_or(text).to_owned()),
                Err(e) => {
                    let valid = &bytes[..e.valid_up_to()];
                    let text = String::from_utf8_lossy(valid);
                    let (line, column) = line_column(&text, text.len());
                    Err(ConfigError::Parse {
                        at: "(file)".to_owned(),
                        message: format!("the file is not UTF-8 text: {e}"),
                        file: None,
                        line: Some(line),
                        column: Some(column),
                    })
                }
            },
        }
    }

    /// The line and column (from 1; the column in characters) of byte
    /// `offset` of `text`.
    pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[start..].chars().count() + 1)
    }

    /// The line and column of where `span` starts, if there is one.
    pub(super) fn span_start(
        text: &str,
        span: Option<Range<usize>>,
    ) -> (Option<usize>, Option<usize>) {
        match span {
            Some(span) if text.is_char_boundary(span.start.min(text.len())) => {
                let (line, column) = line_column(text, span.start);
                (Some(line), Some(column))
            }
            _ => (None, None),
        }
    }

    /// The field a TOML syntax error on `line` is in: the table whose
    /// header comes last before it, and the key on the line, if any.
    pub(super) fn toml_field_at(text: &str, line: Option<usize>) -> String {
        let Some(line) = line else {
            return "(file)".to_owned();
        };
        let mut table = String::new();
        let mut key = None;
        for (i, l) in text.lines().enumerate().take(line) {
            let l = l.trim();
            if i + 1 == line {
                key = l
                    .split_once('=')
                    .map(|(k, _)| k.trim().to_owned())
                    .filter(|k| !k.is_empty() && !k.starts_with('['));
            }
            if l.starts_with('[') {
                if let Some(end) = l.rfind(']') {
                    table = l[..end]
                        .trim_matches(|c| c == '[' || c == ']')
                        .trim()
                        .to_owned();
                }
            }
        }
        match (table.is_empty(), key) {
            (true, None) => "(top level)".to_owned(),
            (true, Some(key)) => key,
            (false, None) => table,
            (false, Some(key)) => format!("{table}.{key}"),
        }
    }

    /// One step of a path into a document: a key of a table or object, or
    /// an index into an array.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Seg<'a> {
        /// A key.
        Key(&'a str),
        /// An index.
        Index(usize),
    }

    /// `path` under the top-level key `root`.
    pub(super) fn under<'a>(root: &'a str, path: &[Seg<'a>]) -> Vec<Seg<'a>> {
        let mut all = vec![Seg::Key(root)];
        all.extend_from_slice(path);
        all
    }

    /// The steps of a field as errors name it: `command`, `args[2]`,
    /// `env.KEY`, `headers.KEY` (the key after the first dot, so it may
    /// hold dots), or `` (the entry itself).
    pub(super) fn field_path(field: &str) -> Vec<Seg<'_>> {
        if field.is_empty() {
            return Vec::new();
        }
        if let Some((map, key)) = field.split_once('.') {
            return vec![Seg::Key(map), Seg::Key(key)];
        }
        if let Some((name, rest)) = field.split_once('[') {
            if let Some(Ok(i)) = rest.strip_suffix(']').map(str::parse) {
                return vec![Seg::Key(name), Seg::Index(i)];
            }
        }
        vec![Seg::Key(field)]
    }

    /// Where the key (or array element) at `path` is in TOML `text`, as
    /// precisely as the parsed document says: the deepest step of `path`
    /// that is found.
    pub(super) fn toml_offset(text: &str, path: &[Seg<'_>]) -> Option<usize> {
        use toml::de::{DeTable, DeValue};
        let doc = DeTable::parse(text).ok()?;
        let root = DeValue::Table(doc.get_ref().clone());
        let mut value = &root;
        let mut found = None;
        for step in path {
            let (at, next) = match (step, value) {
                (Seg::Key(key), DeValue::Table(t)) => {
                    match t.iter().find(|(k, _)| k.get_ref() == key) {
                        Some((k, v)) => (k.span().start, v),
                        None => break,
                    }
                }
                (Seg::Index(i), DeValue::Array(a)) => match a.get(*i) {
                    Some(v) => (v.span().start, v),
                    None => break,
                },
                _ => break,
            };
            found = Some(at);
            value = next.get_ref();
        }
        found
    }

    /// Where the key (or array element) at `path` is in JSON `text`: the
    /// deepest step of `path` that is found, walking the text's
    /// structure. `None` for text that is not JSON up to there.
    pub(super) fn json_offset(text: &str, path: &[Seg<'_>]) -> Option<usize> {
        let mut walk = JsonWalk { text, at: 0 };
        let mut found = None;
        for step in path {
            walk.space();
            let at = match step {
                Seg::Key(key) => walk.find_key(key),
                Seg::Index(i) => walk.find_index(*i),
            };
            match at {
                Some(at) => found = Some(at),
                None => break,
            }
        }
        found
    }

    /// A cursor over JSON text that finds keys and elements and skips
    /// values, without building them.
    struct JsonWalk<'t> {
        text: &'t str,
        at: usize,
    }

    impl JsonWalk<'_> {
        fn peek(&self) -> Option<u8> {
            self.text.as_bytes().get(self.at).copied()
        }

        fn space(&mut self) {
            while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
                self.at += 1;
            }
        }

        fn eat(&mut self, b: u8) -> Option<()> {
            self.space();
            (self.peek()? == b).then(|| self.at += 1)
        }

        /// Skips a string, returning its decoded text.
        fn string(&mut self) -> Option<String> {
            let start = self.at;
            self.eat(b'"')?;
            loop {
                match self.peek()? {
                    b'\\' => self.at += 2,
                    b'"' => {
                        self.at += 1;
                        return serde_json::from_str(self.text.get(start..self.at)?).ok();
                    }
                    _ => self.at += 1,
                }
            }
        }

        /// Skips one value.
        fn value(&mut self) -> Option<()> {
            self.space();
            match self.peek()? {
                b'"' => self.string().map(drop),
                open @ (b'{' | b'[') => {
                    let close = if open == b'{' { b'}' } else { b']' };
                    self.at += 1;
                    self.space();
                    if self.peek()? == close {
                        self.at += 1;
                        return Some(());
                    }
                    loop {
                        if open == b'{' {
                            self.string()?;
                            self.eat(b':')?;
                        }
                        self.value()?;
                        self.space();
                        match self.peek()? {
                            b',' => self.at += 1,
                            b if b == close => {
                                self.at += 1;
                                return Some(());
                            }
                            _ => return None,
                        }
                    }
                }
                _ => {
                    while self.peek().is_some_and(|b| {
                        !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace()
                    }) {
                        self.at += 1;
                    }
                    Some(())
                }
            }
        }

        /// In the object here, finds `key`: returns where it starts and
        /// leaves the cursor at its value.
        fn find_key(&mut self, key: &str) -> Option<usize> {
            self.eat(b'{')?;
            let mut found = None;
            loop {
                self.space();
                if self.peek()? == b'}' {
                    break;
                }
                let start = self.at;
                let k = self.string()?;
                self.eat(b':')?;
                self.space();
                if k == key {
                    // The last one wins, as for serde_json: keep looking.
                    found = Some((start, self.at));
                }
                self.value()?;
                self.space();
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => break,
                    _ => break,
                }
            }
            let (start, value) = found?;
            self.at = value;
            Some(start)
        }

        /// In the array here, finds element `index`: returns where it
        /// starts and leaves the cursor there.
        fn find_index(&mut self, index: usize) -> Option<usize> {
            self.eat(b'[')?;
            for _ in 0..index {
                self.value()?;
                self.eat(b',')?;
            }
            self.space();
            (!matches!(self.peek()?, b']')).then_some(self.at)
        }
    }

    /// `e` with the line and column of its field, when `offset` finds it
    /// in `text`. `offset` is given the path below the service table:
    /// the service's name, then the field's steps (`env`, `KEY`).
    pub(super) fn locate(
        e: ConfigError,
        offset: impl Fn(&[Seg<'_>]) -> Option<usize>,
        text: &str,
    ) -> ConfigError {
        let mut path = Vec::new();
        match &e {
            ConfigError::Invalid { service, field, .. } => {
                path.push(Seg::Key(service.as_str()));
                path.extend(field_path(field));
            }
            ConfigError::Variable { service, field, .. } => {
                path.push(Seg::Key(service.as_str()));
                path.extend(field_path(field));
            }
            ConfigError::BadName { name } => path.push(Seg::Key(name.as_str())),
            _ => return e,
        }
        let mut at = offset(&path);
        // `crate` may be written `krate`.
        if let [_, Seg::Key("crate")] = path[..] {
            path[1] = Seg::Key("krate");
            let alias = offset(&path);
            if alias > at {
                at = alias;
            }
        }
        match at {
            Some(at) => {
                let (line, column) = line_column(text, at);
                ConfigError::Located {
                    file: None,
                    line: Some(line),
                    column: Some(column),
                    source: Box::new(e),
                }
            }
            None => e,
        }
    }
}
