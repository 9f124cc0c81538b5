//! Readying an MCP server: open the session, list its tools, build its
//! stack.

use std::time::Duration;

use tokio::process::{ChildStdin, ChildStdout};

use super::{exited_early, Connected, Connector, Link, StartError, LOG_TAIL_LINES};
use crate::config::ServiceConfig;
use crate::handshake::ExtensionInfo;
use crate::mcp::{McpConnection, McpError};
use crate::process::{self, ProcessHandle};

/// Opens the MCP session of service `name` (over `pipes` for a spawned
/// server, else at its `url`) and lists every tool, each step under
/// `handshake_timeout`, then builds the stack over the session.
pub(super) async fn ready(
    connector: &Connector,
    name: &str,
    config: &ServiceConfig,
    process: Option<&ProcessHandle>,
    pipes: Option<(ChildStdin, ChildStdout)>,
) -> Result<Connected, StartError> {
    let limit = config.handshake_timeout();
    let failed = |source: McpError| StartError::Mcp {
        service: name.to_owned(),
        source: Box::new(source),
        log_tail: process
            .map(|p| p.log_tail(LOG_TAIL_LINES))
            .unwrap_or_default(),
    };
    let steps = async {
        let open = async {
            match pipes {
                Some((stdin, stdout)) => {
                    McpConnection::stdio(stdout, stdin, config.max_in_flight()).await
                }
                None => {
                    let url = config.url.as_deref().unwrap_or_default();
                    McpConnection::http(url, &config.headers, config.max_in_flight()).await
                }
            }
        };
        let mcp = step("initialize", limit, open).await?;
        let tools = match step("tools/list", limit, mcp.list_tools()).await {
            Ok(tools) => tools,
            Err(e) => {
                mcp.close(Duration::ZERO).await;
                return Err(e);
            }
        };
        Ok((mcp, tools))
    };
    let exited = async {
        match process {
            Some(p) => p.exited().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = steps => result,
        status = exited => {
            let p = process.expect("only a process exits");
            return Err(exited_early(name, p, status).await);
        }
    };
    let (mcp, tools) = match result {
        Ok(ok) => ok,
        Err(e) => {
            // A server that exits mid-handshake closes its output a moment
            // before its exit is reaped: report the exit if it follows. Not
            // after a timeout: giving up closed its stdin, and most servers
            // then exit cleanly, which is not why it failed.
            let timed_out = matches!(e, McpError::Timeout { .. });
            if let (Some(p), false) = (process, timed_out) {
                if let Some(status) = p.exited_within(process::EXIT_AFTER_CLOSE).await {
                    return Err(exited_early(name, p, status).await);
                }
            }
            return Err(failed(e));
        }
    };
    config.warn_unmatched_tool_patterns(name, &tools);
    let (tools, hidden_tools) = config.filter_tools(tools);
    let (tools, mut rejected) = crate::tool::partition_checked(tools);
    rejected.extend(mcp.take_rejected());
    let (server, version) = mcp.server_info();
    let info = ExtensionInfo {
        service: server.to_owned(),
        version: version.to_owned(),
        capabilities: Vec::new(),
        tools,
        mismatches: Vec::new(),
        rejected,
    };
    let service = connector.stack(name, config).wrap(mcp.clone());
    tracing::info!(service = %name, tools = info.tools.len(), hidden = hidden_tools.len(), pid = process.map(|p| p.pid()), server = %info.service, "MCP server ready");
    Ok(Connected {
        info,
        link: Link::Mcp(mcp),
        service,
        hidden_tools,
    })
}

/// `fut` under `limit`, a timeout being [`McpError::Timeout`] naming `step`.
async fn step<T>(
    step: &'static str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, McpError>>,
) -> Result<T, McpError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| McpError::Timeout { step, after: limit })?
}
