//! Configuration files: every field, both formats, errors that name things.

use std::time::Duration;

use exthost::config::{ConfigError, HostConfig, RestartPolicy, ServiceKind};
use serde_json::json;

#[test]
fn toml_with_every_field_loads() {
    let cfg = HostConfig::from_toml_str(
        r#"
        services_dir = "/run/exthost"
        [services.search]
        description = "full-text search"
        kind = "extension"
        crate = "search-ext"
        restart = "always"
        enabled = false
        env = { API = "x" }
        config = { index = "docs", limit = 3 }
        command = "/opt/search"
        args = ["--fast"]
        call_timeout = "1500ms"
        handshake_timeout = "2s"
        shutdown_grace = "250ms"
        max_in_flight = 8

        [services.bridge]
        kind = "gateway"
        krate = "bridge"
        "#,
    )
    .unwrap();
    let s = &cfg.services["search"];
    assert_eq!(s.description.as_deref(), Some("full-text search"));
    assert_eq!(s.krate, "search-ext");
    assert_eq!(s.restart, RestartPolicy::Always);
    assert!(!s.enabled);
    assert_eq!(s.env["API"], "x");
    assert_eq!(s.config, json!({"index": "docs", "limit": 3}));
    assert_eq!(
        s.command.as_deref(),
        Some(std::path::Path::new("/opt/search"))
    );
    assert_eq!(s.args, ["--fast"]);
    assert_eq!(s.call_timeout(), Duration::from_millis(1500));
    assert_eq!(s.handshake_timeout(), Duration::from_secs(2));
    assert_eq!(s.shutdown_grace(), Duration::from_millis(250));
    assert_eq!(s.max_in_flight(), 8);
    let b = &cfg.services["bridge"];
    assert_eq!(b.kind, ServiceKind::Gateway);
    assert_eq!(b.krate, "bridge");
    assert!(b.enabled, "enabled defaults to true");
    assert_eq!(b.restart, RestartPolicy::Never);
    assert_eq!(b.call_timeout(), Duration::from_secs(30));
}

#[test]
fn json_loads_the_same_fields() {
    let cfg = HostConfig::from_json_str(
        r#"{"services": {"a": {"crate": "a-ext", "restart": "on_failure", "call_timeout": "5s"}}}"#,
    )
    .unwrap();
    assert_eq!(cfg.services["a"].restart, RestartPolicy::OnFailure);
    assert_eq!(cfg.services["a"].call_timeout(), Duration::from_secs(5));
}

fn parse_error(text: &str) -> (String, String) {
    match HostConfig::from_toml_str(text).unwrap_err() {
        ConfigError::Parse { at, message, .. } => (at, message),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_duration_names_the_service_and_field() {
    let (at, message) = parse_error("[services.search]\ncrate = \"s\"\ncall_timeout = \"soon\"\n");
    assert_eq!(at, "services.search.call_timeout");
    assert!(!message.is_empty());
}

#[test]
fn unknown_kind_names_the_service_and_field() {
    let (at, message) = parse_error("[services.search]\ncrate = \"s\"\nkind = \"plugin\"\n");
    assert_eq!(at, "services.search.kind");
    assert!(message.contains("plugin"), "{message}");
}

#[test]
fn unknown_field_is_refused() {
    let (at, message) = parse_error("[services.search]\ncrate = \"s\"\ntimeout = \"1s\"\n");
    assert!(at.starts_with("services.search"), "{at}");
    assert!(message.contains("timeout"), "{message}");
}

#[test]
fn empty_crate_without_command_is_an_error_naming_both() {
    let err = HostConfig::from_toml_str("[services.search]\ndescription = \"x\"\n").unwrap_err();
    match err.innermost() {
        ConfigError::Invalid { service, field, .. } => {
            assert_eq!(service, "search");
            assert_eq!(*field, "crate");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("no `command`"), "{err}");
}

#[test]
fn bad_service_name_is_refused() {
    let err = HostConfig::from_toml_str("[services.\"../evil\"]\ncrate = \"x\"\n").unwrap_err();
    assert!(
        matches!(err.innermost(), ConfigError::BadName { name } if name == "../evil"),
        "{err:?}"
    );
}

#[test]
fn json_errors_name_the_path_too() {
    let err = HostConfig::from_json_str(
        r#"{"services": {"a": {"crate": "x", "max_in_flight": "many"}}}"#,
    )
    .unwrap_err();
    match err {
        ConfigError::Parse { at, .. } => assert_eq!(at, "services.a.max_in_flight"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_readme_configuration_example_parses() {
    let readme = include_str!("../README.md");
    let start = readme.find("```toml\n").expect("README has a TOML example") + 8;
    let len = readme[start..].find("```").unwrap();
    let cfg = HostConfig::from_toml_str(&readme[start..start + len]).unwrap();
    assert_eq!(cfg.services.len(), 3);
    assert_eq!(cfg.services["bridge"].kind, ServiceKind::Gateway);
    assert_eq!(cfg.services["search"].max_in_flight(), 4);
}

#[test]
fn a_service_defined_twice_is_refused() {
    let err =
        HostConfig::from_json_str(r#"{"services": {"a": {"crate": "x"}, "a": {"crate": "y"}}}"#)
            .unwrap_err();
    assert!(
        err.to_string().contains("service `a` is defined twice"),
        "{err}"
    );
    // TOML refuses it in its own words.
    let err =
        HostConfig::from_toml_str("[services.a]\ncrate = \"x\"\n[services.a]\ncrate = \"y\"\n")
            .unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
}

#[test]
fn broken_json_says_where() {
    let err =
        HostConfig::from_json_str(r#"{"services": {"a": {"crate": "x", "config": {"k": }}}}"#)
            .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("services.a.config"), "{text}");
    assert!(text.contains("column"), "{text}");
}

#[test]
fn mcp_services_load_with_their_fields_and_defaults() {
    let cfg = HostConfig::from_toml_str(
        r#"
        [services.gh]
        kind = "mcp"
        command = "npx"
        args = ["-y", "@modelcontextprotocol/server-github"]
        cwd = "/srv"
        prefix = "gh_"
        [services.remote]
        kind = "mcp"
        url = "https://example.com/mcp"
        headers = { Authorization = "Bearer x" }
        max_in_flight = 4
        "#,
    )
    .unwrap();
    let gh = &cfg.services["gh"];
    assert_eq!(gh.kind, ServiceKind::Mcp);
    assert_eq!(gh.args, ["-y", "@modelcontextprotocol/server-github"]);
    assert_eq!(gh.prefix.as_deref(), Some("gh_"));
    assert_eq!(
        gh.max_in_flight(),
        16,
        "MCP services default to 16 in flight"
    );
    let remote = &cfg.services["remote"];
    assert_eq!(remote.url.as_deref(), Some("https://example.com/mcp"));
    assert_eq!(remote.headers["Authorization"], "Bearer x");
    assert_eq!(remote.max_in_flight(), 4);
    // Native extensions keep one in flight.
    let native = HostConfig::from_toml_str("[services.n]\ncrate = \"x\"\n").unwrap();
    assert_eq!(native.services["n"].max_in_flight(), 1);
}

#[test]
fn an_mcp_service_needs_exactly_one_of_command_and_url() {
    for (text, field) in [
        (
            "kind = \"mcp\"\ncommand = \"x\"\nurl = \"http://h/mcp\"",
            "url",
        ),
        ("kind = \"mcp\"", "command"),
        ("kind = \"mcp\"\nurl = \"ftp://h/mcp\"", "url"),
        ("crate = \"x\"\nurl = \"http://h/mcp\"", "url"),
    ] {
        let err = HostConfig::from_toml_str(&format!("[services.svc]\n{text}\n")).unwrap_err();
        match err.innermost() {
            ConfigError::Invalid {
                service, field: f, ..
            } => {
                assert_eq!(service, "svc", "{text}");
                assert_eq!(*f, field, "{text}: {err}");
            }
            other => panic!("{text}: {other}"),
        }
    }
}

#[test]
fn variables_expand_in_args_env_url_and_headers_and_an_unset_one_is_named() {
    // PATH and HOME are set in any test environment; this one never is.
    let path = std::env::var("PATH").unwrap();
    let cfg = HostConfig::from_toml_str(
        r#"
        [services.s]
        kind = "mcp"
        url = "http://127.0.0.1/${EXTHOST_TEST_NEVER_SET:-mcp}"
        headers = { X-Path = "${PATH}" }
        [services.t]
        kind = "mcp"
        command = "x"
        args = ["--path=${PATH}", "$PATH", "${EXTHOST_TEST_NEVER_SET:-dflt}"]
        env = { P = "${PATH}" }
        "#,
    )
    .unwrap();
    assert_eq!(
        cfg.services["s"].url.as_deref(),
        Some("http://127.0.0.1/mcp")
    );
    assert_eq!(cfg.services["s"].headers["X-Path"], path);
    let t = &cfg.services["t"];
    assert_eq!(
        t.args,
        [format!("--path={path}"), "$PATH".into(), "dflt".into()]
    );
    assert_eq!(t.env["P"], path);

    let err = HostConfig::from_toml_str(
        "[services.t]\nkind = \"mcp\"\ncommand = \"x\"\nenv = { TOKEN = \"${EXTHOST_TEST_NEVER_SET}\" }\n",
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err.innermost(), ConfigError::Variable { .. }),
        "{text}"
    );
    assert!(
        text.contains("`t`")
            && text.contains("env.TOKEN")
            && text.contains("${EXTHOST_TEST_NEVER_SET}"),
        "{text}"
    );
}

#[test]
fn mcp_client_files_are_read_as_mcp_services() {
    let claude = HostConfig::from_json_str(
        &json!({"mcpServers": {
            "fs": {"command": "npx", "args": ["-y", "server-fs", "/tmp"], "env": {"A": "1"}, "autoApprove": []},
            "web": {"type": "streamable-http", "url": "http://127.0.0.1:3000/mcp", "headers": {"X": "y"}},
            "off": {"command": "x", "disabled": true}
        }})
        .to_string(),
    )
    .unwrap();
    let fs = &claude.services["fs"];
    assert_eq!(fs.kind, ServiceKind::Mcp);
    assert_eq!(fs.command.as_deref(), Some(std::path::Path::new("npx")));
    assert_eq!(fs.args, ["-y", "server-fs", "/tmp"]);
    assert_eq!(fs.env["A"], "1");
    assert_eq!(
        claude.services["web"].url.as_deref(),
        Some("http://127.0.0.1:3000/mcp")
    );
    assert!(!claude.services["off"].enabled);

    for kind in [
        "http",
        "streamable-http",
        "streamable_http",
        "streamableHttp",
    ] {
        let vscode = HostConfig::from_json_str(
            &json!({"servers": {"w": {"type": kind, "url": "https://h/mcp"}}}).to_string(),
        )
        .unwrap();
        assert_eq!(vscode.services["w"].kind, ServiceKind::Mcp, "{kind}");
    }
    let stdio = HostConfig::from_json_str(
        &json!({"servers": {"s": {"type": "stdio", "command": "srv"}}}).to_string(),
    )
    .unwrap();
    assert!(stdio.services["s"].command.is_some());

    let err = HostConfig::from_json_str(
        &json!({"servers": {"legacy": {"type": "sse", "url": "http://h/sse"}}}).to_string(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("legacy") && text.contains("\"sse\""),
        "{text}"
    );
}

/// Writes `bytes` to `dir/name` and loads it.
fn load(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<HostConfig, ConfigError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    HostConfig::load(&path)
}

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn a_utf8_byte_order_mark_is_accepted_in_every_format() {
    let dir = temp();
    let json = b"\xEF\xBB\xBF{\"services\": {\"a\": {\"crate\": \"a-ext\"}}}";
    let cfg = load(dir.path(), "c.json", json).unwrap();
    assert_eq!(cfg.services["a"].krate, "a-ext");
    let toml = b"\xEF\xBB\xBF[services.a]\ncrate = \"a-ext\"\n";
    let cfg = load(dir.path(), "c.toml", toml).unwrap();
    assert_eq!(cfg.services["a"].krate, "a-ext");
    // The same through the string parsers.
    let text = std::str::from_utf8(json).unwrap();
    assert_eq!(HostConfig::from_json_str(text).unwrap().services.len(), 1);
    let text = std::str::from_utf8(toml).unwrap();
    assert_eq!(HostConfig::from_toml_str(text).unwrap().services.len(), 1);
}

#[test]
fn utf16_with_a_byte_order_mark_is_read_too() {
    let dir = temp();
    let text = "{\"services\": {\"a\": {\"crate\": \"a-ext\"}}}";
    let mut le = vec![0xFF, 0xFE];
    le.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    assert_eq!(
        load(dir.path(), "le.json", &le).unwrap().services["a"].krate,
        "a-ext"
    );
    let mut be = vec![0xFE, 0xFF];
    be.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
    assert_eq!(
        load(dir.path(), "be.json", &be).unwrap().services["a"].krate,
        "a-ext"
    );
}

#[test]
fn a_toml_syntax_error_names_the_file_line_column_and_field() {
    let dir = temp();
    let err = load(
        dir.path(),
        "c.toml",
        b"# services\n[services.search]\ncrate = \"unterminated\n",
    )
    .unwrap_err();
    let path = dir.path().join("c.toml");
    let (file, line, column) = err.location();
    assert_eq!(file, Some(path.as_path()));
    assert_eq!(line, Some(3), "{err}");
    assert!(column.is_some(), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}:3:", path.display())),
        "{text}"
    );
    assert!(text.contains("`services.search.crate`"), "{text}");
}

#[test]
fn a_toml_type_error_names_the_file_line_column_and_field() {
    let dir = temp();
    let err = load(
        dir.path(),
        "c.toml",
        b"[services.search]\ncrate = \"s\"\ncall_timeout = \"soon\"\n",
    )
    .unwrap_err();
    let path = dir.path().join("c.toml");
    assert_eq!(
        err.location(),
        (Some(path.as_path()), Some(3), Some(16)),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}:3:16: ", path.display())),
        "{text}"
    );
    assert!(text.contains("`services.search.call_timeout`"), "{text}");
}

#[test]
fn a_json_error_names_the_file_line_column_and_field() {
    let dir = temp();
    let err = load(
        dir.path(),
        "c.json",
        b"{\"services\": {\n  \"a\": {\"crate\": \"x\", \"max_in_flight\": \"many\"}\n}}",
    )
    .unwrap_err();
    let path = dir.path().join("c.json");
    let (file, line, column) = err.location();
    assert_eq!((file, line), (Some(path.as_path()), Some(2)), "{err}");
    assert!(column.is_some(), "{err}");
    assert!(
        err.to_string().contains("`services.a.max_in_flight`"),
        "{err}"
    );
}

#[test]
fn an_invalid_value_names_the_file_and_the_line_of_its_field() {
    let dir = temp();
    let toml = b"[services.search]\ncrate = \"s\"\nmax_in_flight = 0\n";
    let err = load(dir.path(), "c.toml", toml).unwrap_err();
    let path = dir.path().join("c.toml");
    assert_eq!(
        err.location(),
        (Some(path.as_path()), Some(3), Some(1)),
        "{err}"
    );
    assert!(
        matches!(
            err.innermost(),
            ConfigError::Invalid {
                field: "max_in_flight",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "{}:3:1: service `search`: field `max_in_flight`",
            path.display()
        )),
        "{err}"
    );
    let json = b"{\"services\": {\n \"a\": {\n  \"crate\": \"x\",\n  \"max_in_flight\": 0\n }}}";
    let err = load(dir.path(), "c.json", json).unwrap_err();
    let path = dir.path().join("c.json");
    assert_eq!(
        err.location(),
        (Some(path.as_path()), Some(4), Some(3)),
        "{err}"
    );
    // A field that is missing: the line of its service.
    let err = load(
        dir.path(),
        "d.toml",
        b"\n[services.search]\ndescription = \"x\"\n",
    )
    .unwrap_err();
    let (_, line, _) = err.location();
    assert_eq!(line, Some(2), "{err}");
    // A bad service name: its line.
    let err = load(
        dir.path(),
        "e.toml",
        b"[services.\"../evil\"]\ncrate = \"x\"\n",
    )
    .unwrap_err();
    assert!(
        matches!(err.innermost(), ConfigError::BadName { .. }),
        "{err:?}"
    );
    assert_eq!(err.location().1, Some(1), "{err}");
}

#[test]
fn a_file_that_is_not_utf8_names_the_file_and_line() {
    let dir = temp();
    let err = load(dir.path(), "c.toml", b"[services.a]\ncrate = \"\xFF\"\n").unwrap_err();
    let path = dir.path().join("c.toml");
    assert_eq!(err.location().0, Some(path.as_path()));
    assert_eq!(err.location().1, Some(2), "{err}");
    assert!(err.to_string().contains("not UTF-8"), "{err}");
}

/// The line and column (from 1) where `marker` first occurs in `text`.
fn pos(text: &str, marker: &str) -> (usize, usize) {
    let at = text.find(marker).unwrap_or_else(|| panic!("no {marker:?}"));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

/// Loads `text` as `name` and checks the error is at `marker`'s line and
/// column, and names `field`.
fn fails_at(name: &str, text: &str, marker: &str, field: &str) -> ConfigError {
    let dir = temp();
    let err = load(dir.path(), name, text.as_bytes()).unwrap_err();
    let (line, column) = pos(text, marker);
    let path = dir.path().join(name);
    assert_eq!(
        err.location(),
        (Some(path.as_path()), Some(line), Some(column)),
        "{name}: {err}\n{text}"
    );
    assert!(err.to_string().contains(field), "{name}: {err}");
    err
}

#[test]
fn trailing_garbage_after_json_is_refused_where_it_is() {
    let own = "{\"services\": {\"a\": {\"crate\": \"x\"}}}\n}}garbage\n";
    let err = fails_at("own.json", own, "}}garbage", "(top level)");
    assert!(err.to_string().contains("trailing"), "{err}");
    let client = "{\"mcpServers\": {\"a\": {\"command\": \"x\"}}}\n}}garbage\n";
    let err = fails_at("client.json", client, "}}garbage", "(top level)");
    assert!(err.to_string().contains("trailing"), "{err}");
    // Whitespace after the value is fine.
    let dir = temp();
    load(dir.path(), "ok.json", b"{\"services\": {}}\n\n  \n").unwrap();
}

#[test]
fn every_error_in_a_client_file_names_its_line_and_column() {
    let cases: &[(&str, &str, &str)] = &[
        (r#""command": 3"#, r#""command""#, "mcpServers.a.command"),
        (r#""type": "sse", "url": "http://x""#, r#""type""#, "`type`"),
        (
            r#""command": "x", "env": {"K": 1}"#,
            r#""K""#,
            "mcpServers.a.env.K",
        ),
        (
            r#""command": "x", "disabled": "yes""#,
            r#""disabled""#,
            "mcpServers.a.disabled",
        ),
        (
            r#""command": "x", "args": "-v""#,
            r#""args""#,
            "mcpServers.a.args",
        ),
        (
            r#""command": "x", "args": ["-v", 2]"#,
            "2]",
            "mcpServers.a.args[1]",
        ),
        (
            r#""command": "x", "args": ["-v", "${EXTHOST_TEST_UNSET_VAR}"]"#,
            r#""${EXTHOST"#,
            "args[1]",
        ),
        (
            r#""command": "x", "env": {"T": "${EXTHOST_TEST_UNSET_VAR}"}"#,
            r#""T""#,
            "env.T",
        ),
        (r#""url": "ftp://x""#, r#""url""#, "`url`"),
    ];
    for key in ["mcpServers", "servers"] {
        for (entry, marker, field) in cases {
            let text = format!(
                "{{\n  \"{key}\": {{\n    \"other\": {{\"command\": \"y\"}},\n    \"a\": {{{entry}}}\n  }}\n}}\n"
            );
            let field = field.replace("mcpServers", key);
            // The marker as it is in the entry, not in `other`.
            let at = text.find("\"a\":").unwrap();
            let marker_at = at + text[at..].find(marker).unwrap();
            let (line, column) = pos(&text, &text[marker_at..]);
            let dir = temp();
            let err = load(dir.path(), "c.json", text.as_bytes()).unwrap_err();
            assert_eq!(
                (err.location().1, err.location().2),
                (Some(line), Some(column)),
                "{err}\n{text}"
            );
            assert!(err.to_string().contains(&field), "{field}: {err}");
        }
    }
    // A server renamed to a usable name is found by the name it has in
    // the file.
    let text = "{\"mcpServers\": {\n  \"my server\": {\n    \"url\": \"ftp://x\"\n  }\n}}\n";
    fails_at("renamed.json", text, "\"url\"", "`url`");
}

#[test]
fn variable_errors_name_their_line_and_column_in_toml_and_json() {
    let toml = "[services.a]\ncrate = \"x\"\nargs = [\"-v\", \"${EXTHOST_TEST_UNSET_VAR}\"]\n";
    fails_at("a.toml", toml, "\"${EXTHOST", "args[1]");
    let toml =
        "[services.a]\ncrate = \"x\"\n\n[services.a.env]\nT = \"${EXTHOST_TEST_UNSET_VAR}\"\n";
    fails_at("b.toml", toml, "T =", "env.T");
    let toml = "[services.a]\nkind = \"mcp\"\nurl = \"http://x\"\nheaders = { Authorization = \"${EXTHOST_TEST_UNSET_VAR}\" }\n";
    fails_at("c.toml", toml, "Authorization", "headers.Authorization");
    let json = "{\"services\": {\"a\": {\n  \"crate\": \"x\",\n  \"args\": [\n    \"${EXTHOST_TEST_UNSET_VAR}\"\n  ]\n}}}\n";
    fails_at("d.json", json, "\"${EXTHOST", "args[0]");
    let json = "{\"services\": {\"a\": {\n  \"crate\": \"x\",\n  \"env\": {\"T\": \"${EXTHOST_TEST_\"}\n}}}\n";
    fails_at("e.json", json, "\"T\"", "env.T");
}

#[test]
fn an_empty_command_is_refused_at_load_for_every_kind() {
    let err = fails_at(
        "a.toml",
        "[services.a]\ncommand = \"\"\n",
        "command",
        "`command` is empty",
    );
    assert!(
        matches!(
            err.innermost(),
            ConfigError::Invalid {
                field: "command",
                ..
            }
        ),
        "{err:?}"
    );
    fails_at(
        "b.toml",
        "[services.a]\nkind = \"mcp\"\ncommand = \"\"\n",
        "command",
        "`command` is empty",
    );
    fails_at(
        "c.json",
        "{\"services\": {\"a\": {\"command\": \"\"}}}",
        "\"command\"",
        "`command` is empty",
    );
}
