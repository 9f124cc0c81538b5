//! Keeps one bad tool definition from breaking a whole stdio MCP server.
//!
//! rmcp decodes a `tools/list` answer as a whole: one tool whose
//! `inputSchema` is not a JSON object (`null`, an array, missing), or that
//! has no name, makes the answer undecodable and ends the session. Between
//! the server's stdout and rmcp, [`Sanitize`] takes such tools out of the
//! answer, each recorded with why, so that the rest of the server works and
//! the bad tool is reported like any other rejected definition.
//!
//! Only lines that mention `"inputSchema"` are parsed; every other line
//! passes through as is (one copy).
//!
//! It also bounds what the server can make the host hold: a line longer
//! than rmcp's limit (16 MiB, [`MAX_LINE`]) is not buffered but skipped as
//! it arrives, and, when its JSON-RPC `id` shows in its first or last
//! bytes, replaced by an error answer for that id, so its call fails at
//! once instead of waiting for its deadline.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, ReadBuf};

use crate::tool::{RejectedTool, SchemaProblem};

/// Tools taken out of answers, until collected.
pub(crate) type Rejected = Arc<Mutex<Vec<RejectedTool>>>;

pin_project! {
    /// A server's stdout, with malformed tools taken out of `tools/list`
    /// answers (see the module docs).
    pub(crate) struct Sanitize<R> {
        #[pin]
        inner: R,
        // Bytes of the line being read.
        line: BytesMut,
        // Whole lines ready to hand out.
        ready: BytesMut,
        rejected: Rejected,
        eof: bool,
        // Skipping an overlong line: its first bytes, its last bytes, and
        // how long it is so far.
        skipping: Option<Skipped>,
    }
}

/// The longest line rmcp reads (its `DEFAULT_MAX_LINE_LENGTH`).
pub(crate) const MAX_LINE: usize = 16 * 1024 * 1024;

/// What is kept of an overlong line: enough to find its `id`.
struct Skipped {
    head: Vec<u8>,
    tail: Vec<u8>,
    len: usize,
}

const KEEP: usize = 512;

impl Skipped {
    fn new(start: &[u8]) -> Self {
        let mut skipped = Skipped {
            head: start[..start.len().min(KEEP)].to_vec(),
            tail: Vec::new(),
            len: 0,
        };
        skipped.push(start);
        skipped
    }

    fn push(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        self.tail
            .extend_from_slice(&bytes[bytes.len().saturating_sub(KEEP)..]);
        let extra = self.tail.len().saturating_sub(KEEP);
        self.tail.drain(..extra);
    }

    /// The error answer standing for the line, if its id can be found.
    fn answer(&self) -> Option<BytesMut> {
        let id = find_id(&self.head).or_else(|| find_id(&self.tail))?;
        let message = format!(
            "the server's answer is {} bytes, over the {MAX_LINE}-byte line limit; skipped",
            self.len
        );
        let answer = serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": -32603, "message": message},
        });
        let mut out = serde_json::to_vec(&answer).expect("a Value always serializes");
        out.push(b'\n');
        Some(BytesMut::from(&out[..]))
    }
}

/// The value of the first `"id":` in `bytes`: a number or a string.
fn find_id(bytes: &[u8]) -> Option<serde_json::Value> {
    const KEY: &[u8] = b"\"id\":";
    let at = bytes.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &bytes[at..];
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let mut de = serde_json::Deserializer::from_slice(rest).into_iter::<serde_json::Value>();
    match de.next()? {
        Ok(v @ (serde_json::Value::Number(_) | serde_json::Value::String(_))) => Some(v),
        _ => None,
    }
}

impl<R> Sanitize<R> {
    pub(crate) fn new(inner: R, rejected: Rejected) -> Self {
        Sanitize {
            inner,
            line: BytesMut::new(),
            ready: BytesMut::new(),
            rejected,
            eof: false,
            skipping: None,
        }
    }
}

const NEEDLE: &[u8] = b"\"inputSchema\"";

fn mentions_input_schema(line: &[u8]) -> bool {
    memchr::memmem::find(line, NEEDLE).is_some()
}

/// `line` with malformed tools taken out of a `tools/list` answer, or as
/// it is.
fn sanitize(line: BytesMut, rejected: &Rejected) -> BytesMut {
    if !mentions_input_schema(&line) {
        return line;
    }
    let Ok(mut message) = serde_json::from_slice::<serde_json::Value>(&line) else {
        return line;
    };
    let Some(tools) = message
        .get_mut("result")
        .and_then(|r| r.get_mut("tools"))
        .and_then(|t| t.as_array_mut())
    else {
        return line;
    };
    let mut taken = Vec::new();
    tools.retain(|tool| match problem(tool) {
        None => true,
        Some(r) => {
            taken.push(r);
            false
        }
    });
    if taken.is_empty() {
        return line;
    }
    for r in &taken {
        tracing::warn!(tool = %r.name, problem = %r.problem, "MCP server declared a tool rmcp cannot read; leaving it out");
    }
    rejected.lock().expect("lock poisoned").extend(taken);
    let mut out = serde_json::to_vec(&message).expect("a Value always serializes");
    out.push(b'\n');
    BytesMut::from(&out[..])
}

/// Why rmcp could not read `tool`, if it could not.
fn problem(tool: &serde_json::Value) -> Option<RejectedTool> {
    let name = tool.get("name").and_then(|n| n.as_str());
    let schema = tool.get("inputSchema");
    let kind = match schema {
        Some(serde_json::Value::Object(_)) if name.is_some() => return None,
        Some(serde_json::Value::Object(_)) => {
            return Some(RejectedTool {
                name: "(unnamed)".to_owned(),
                problem: SchemaProblem::Invalid("the tool has no name".to_owned()),
            })
        }
        None => "missing",
        Some(serde_json::Value::Null) => "null",
        Some(serde_json::Value::Bool(_)) => "a boolean",
        Some(serde_json::Value::Number(_)) => "a number",
        Some(serde_json::Value::String(_)) => "a string",
        Some(serde_json::Value::Array(_)) => "an array",
    };
    Some(RejectedTool {
        name: name.unwrap_or("(unnamed)").to_owned(),
        problem: SchemaProblem::NotAnObject(kind),
    })
}

impl<R: AsyncRead> AsyncRead for Sanitize<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if *this.eof {
                // A last line without a newline goes out as it is.
                if !this.line.is_empty() {
                    let rest = this.line.split();
                    this.ready.unsplit(rest);
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            // Read straight into the line buffer (no zeroed scratch).
            let start = this.line.len();
            this.line.reserve(16 * 1024);
            match tokio_util::io::poll_read_buf(this.inner.as_mut(), cx, this.line) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => *this.eof = true,
                Poll::Ready(Ok(_)) => {
                    let mut from = start;
                    // The rest of an overlong line is skipped as it comes.
                    if let Some(skipped) = this.skipping.as_mut() {
                        match memchr::memchr(b'\n', &this.line[start..]) {
                            None => {
                                skipped.push(&this.line[start..]);
                                this.line.truncate(start);
                                continue;
                            }
                            Some(at) => {
                                skipped.push(&this.line[start..start + at]);
                                let _ = this.line.split_to(start + at + 1);
                                let skipped = this.skipping.take().expect("skipping");
                                tracing::warn!(
                                    bytes = skipped.len,
                                    "an MCP server's line is over the 16 MiB limit; skipped"
                                );
                                if let Some(answer) = skipped.answer() {
                                    this.ready.unsplit(answer);
                                }
                                from = 0;
                            }
                        }
                    }
                    // Every whole line that arrived is ready.
                    while let Some(at) = memchr::memchr(b'\n', &this.line[from..]) {
                        let whole = this.line.split_to(from + at + 1);
                        if whole.len() > MAX_LINE + 1 {
                            let skipped = Skipped::new(&whole[..whole.len() - 1]);
                            if let Some(answer) = skipped.answer() {
                                this.ready.unsplit(answer);
                            }
                        } else {
                            let clean = sanitize(whole, this.rejected);
                            this.ready.unsplit(clean);
                        }
                        from = 0;
                    }
                    if this.line.len() > MAX_LINE {
                        // No end in sight: keep only what finds its id.
                        *this.skipping = Some(Skipped::new(this.line));
                        this.line.clear();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn an_overlong_answer_becomes_an_error_for_its_id_and_is_never_held() {
        let big = "x".repeat(MAX_LINE + 10);
        let input = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"{big}\"}}]}}}}\n{{\"jsonrpc\":\"2.0\",\"id\":8,\"result\":{{}}}}\n"
        );
        let mut out = String::new();
        Sanitize::new(input.as_bytes(), Rejected::default())
            .read_to_string(&mut out)
            .await
            .unwrap();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["id"], 7);
        assert!(lines[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line limit"));
        assert_eq!(lines[1]["id"], 8);
    }

    #[tokio::test]
    async fn bad_tools_are_taken_out_and_other_lines_pass() {
        let input = concat!(
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"ok","inputSchema":{"type":"object"}},{"name":"bad","inputSchema":null},{"name":"none"}]}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#,
            "\n",
            "tail without newline"
        );
        let rejected = Rejected::default();
        let mut out = String::new();
        Sanitize::new(input.as_bytes(), rejected.clone())
            .read_to_string(&mut out)
            .await
            .unwrap();
        let lines: Vec<&str> = out.split('\n').collect();
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        let names: Vec<_> = first["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["ok"]);
        assert_eq!(
            lines[1],
            r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#
        );
        assert_eq!(lines[2], "tail without newline");
        let rejected = rejected.lock().unwrap();
        let names: Vec<_> = rejected.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["bad", "none"]);
        assert_eq!(rejected[0].problem, SchemaProblem::NotAnObject("null"));
        assert_eq!(rejected[1].problem, SchemaProblem::NotAnObject("missing"));
    }
}
