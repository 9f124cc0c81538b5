//! The JSON configuration files MCP clients already use: a top-level
//! `mcpServers` object (Claude Desktop, Claude Code, Cursor) or `servers`
//! (VS Code). Each entry becomes a `kind = "mcp"` service.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::location::{field_path, Seg};
use super::{ConfigError, HostConfig, ServiceConfig, ServiceKind};

/// Finds the line and column of a path (below the top-level key) in the
/// file's text.
pub(super) type Locator<'a> = &'a dyn Fn(&[Seg<'_>]) -> Option<(usize, usize)>;

/// A service's names: the usable one it got, for each that differs from
/// the name the file gives it.
pub(super) type GivenNames = BTreeMap<String, String>;

/// The top-level key of an MCP client's file in `root`, if it is one: a
/// JSON object with `mcpServers` or `servers` and no `services`.
pub(super) fn client_key(root: &Value) -> Option<&'static str> {
    let obj = root.as_object()?;
    if obj.contains_key("services") {
        return None;
    }
    ["mcpServers", "servers"]
        .into_iter()
        .find(|k| obj.get(*k).is_some_and(Value::is_object))
}

/// Reads an MCP client's file. Besides the clients' keys, an entry may
/// carry exthost's confinement keys (`sha256`, `tools`, `inherit_env`,
/// `env_pass`, `limits`, `sandbox`), as in exthost's TOML. Other keys are
/// ignored with a warning (those files carry client-specific keys). Errors carry the
/// line and column `locate` finds for their field.
pub(super) fn from_client_json(
    root: Value,
    key: &'static str,
    locate: Locator<'_>,
) -> Result<(HostConfig, GivenNames), ConfigError> {
    let Value::Object(mut root) = root else {
        unreachable!("client_key checked it is an object")
    };
    for other in root.keys().filter(|k| *k != key) {
        tracing::warn!(key = %other, "ignoring a top-level key exthost does not use");
    }
    let Some(Value::Object(servers)) = root.remove(key) else {
        unreachable!("client_key checked it is an object")
    };
    let mut cfg = HostConfig::default();
    let mut names = GivenNames::new();
    for (given, entry) in servers {
        let service = entry_to_service(key, &given, entry, locate)?;
        // Service names become file names; clients allow any key.
        let name = service_name(&given, |n| cfg.services.contains_key(n));
        if name != given {
            tracing::warn!(server = %given, service = %name, "a server's name is not a usable service name; renamed");
        }
        if cfg.services.insert(name.clone(), service).is_some() {
            let (line, column) = locate(&[Seg::Key(&given)]).unzip();
            return Err(ConfigError::Parse {
                at: format!("{key}.{name}"),
                message: format!("service `{name}` is defined twice"),
                file: None,
                line,
                column,
            });
        }
        if name != given {
            names.insert(name, given);
        }
    }
    Ok((cfg, names))
}

fn entry_to_service(
    key: &str,
    name: &str,
    entry: Value,
    locate: Locator<'_>,
) -> Result<ServiceConfig, ConfigError> {
    let at = |field: &str| match field {
        "" => format!("{key}.{name}"),
        _ => format!("{key}.{name}.{field}"),
    };
    let wrong = |field: &str, expected: &str| {
        let mut path = vec![Seg::Key(name)];
        path.extend(field_path(field));
        let (line, column) = locate(&path).unzip();
        ConfigError::Parse {
            at: at(field),
            message: format!("expected {expected}"),
            file: None,
            line,
            column,
        }
    };
    let Value::Object(mut entry) = entry else {
        return Err(wrong("", "an object"));
    };
    let string =
        |entry: &mut Map<String, Value>, field: &str| -> Result<Option<String>, ConfigError> {
            match entry.remove(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(wrong(field, "a string")),
            }
        };
    let map = |entry: &mut Map<String, Value>,
               field: &str|
     -> Result<BTreeMap<String, String>, ConfigError> {
        match entry.remove(field) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    _ => Err(wrong(&format!("{field}.{k}"), "a string")),
                })
                .collect(),
            Some(_) => Err(wrong(field, "an object of strings")),
        }
    };

    let kind = string(&mut entry, "type")?;
    let mut service = ServiceConfig {
        kind: ServiceKind::Mcp,
        ..Default::default()
    };
    service.command = string(&mut entry, "command")?.map(PathBuf::from);
    service.url = string(&mut entry, "url")?;
    match kind.as_deref() {
        None => {}
        Some("stdio") if service.url.is_none() => {}
        Some("http" | "streamable-http" | "streamable_http" | "streamableHttp")
            if service.command.is_none() => {}
        Some(other @ ("stdio" | "http" | "streamable-http" | "streamable_http" | "streamableHttp")) => {
            return Err(ConfigError::Invalid {
                service: name.to_owned(),
                field: "type",
                problem: format!("is {other:?}, which does not match the entry's `command`/`url`"),
            })
        }
        Some(other) => {
            return Err(ConfigError::Invalid {
                service: name.to_owned(),
                field: "type",
                problem: format!(
                    "is {other:?}, which exthost does not speak: use \"stdio\" or \"http\" (Streamable HTTP)"
                ),
            })
        }
    }
    service.args = match entry.remove("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                _ => Err(wrong(&format!("args[{i}]"), "a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => Err(wrong("args", "an array of strings"))?,
    };
    service.env = map(&mut entry, "env")?;
    service.headers = map(&mut entry, "headers")?;
    service.cwd = string(&mut entry, "cwd")?.map(PathBuf::from);
    if let Some(disabled) = entry.remove("disabled") {
        service.enabled = !disabled
            .as_bool()
            .ok_or_else(|| wrong("disabled", "true or false"))?;
    }
    // exthost's own confinement keys, as in its TOML (validated with the
    // rest of the configuration). They fail closed: `null` for one, or a
    // key spelled like one, is refused rather than read as "not set".
    for field in CONFINEMENT_KEYS {
        if entry.get(*field).is_some_and(Value::is_null) {
            return Err(wrong(
                field,
                "a value (leave the key out to leave it unset), not null",
            ));
        }
    }
    if let Some(near) = entry
        .keys()
        .find_map(|k| near_confinement_key(k).map(|c| (k.clone(), c)))
    {
        return Err(ConfigError::Invalid {
            service: name.to_owned(),
            field: near.1,
            problem: format!(
                "is spelled {:?} here; exthost refuses a misspelled confinement key rather than run the server unconfined",
                near.0
            ),
        });
    }
    service.sha256 = string(&mut entry, "sha256")?;
    if let Some(inherit) = entry.remove("inherit_env") {
        service.inherit_env = inherit
            .as_bool()
            .ok_or_else(|| wrong("inherit_env", "true or false"))?;
    }
    let typed = Typed { key, name, locate };
    service.tools = typed.field(&mut entry, "tools", true)?;
    service.env_pass = typed
        .field(&mut entry, "env_pass", false)?
        .unwrap_or_default();
    service.limits = typed.field(&mut entry, "limits", true)?.unwrap_or_default();
    service.sandbox = typed.field(&mut entry, "sandbox", true)?;
    for other in entry.keys() {
        tracing::warn!(service = %name, key = %other, "ignoring a key exthost does not use");
    }
    Ok(service)
}

/// exthost's confinement keys, which client files may carry too.
const CONFINEMENT_KEYS: &[&str] = &[
    "sha256",
    "tools",
    "inherit_env",
    "env_pass",
    "limits",
    "sandbox",
];

/// The confinement key `key` is a misspelling of (another case or
/// separator, or a typo within two edits, one for keys of five letters or
/// fewer), if any; `None` for the key
/// itself and for keys unlike any.
fn near_confinement_key(key: &str) -> Option<&'static str> {
    let norm = |k: &str| k.to_ascii_lowercase().replace(['_', '-'], "");
    let k = norm(key);
    CONFINEMENT_KEYS.iter().copied().find(|c| {
        let c_norm = norm(c);
        // One edit for short keys: `roots` is not `tools`.
        let within = if c_norm.len() <= 5 { 1 } else { 2 };
        *c != key && (c_norm == k || strsim::damerau_levenshtein(&c_norm, &k) <= within)
    })
}

/// Reads the typed keys of entry `name` under `key`.
struct Typed<'a> {
    key: &'a str,
    name: &'a str,
    locate: Locator<'a>,
}

impl Typed<'_> {
    /// Takes `field` out of `entry` and deserializes it as exthost's TOML
    /// would; `table`: it must be an object.
    fn field<T: serde::de::DeserializeOwned>(
        &self,
        entry: &mut Map<String, Value>,
        field: &str,
        table: bool,
    ) -> Result<Option<T>, ConfigError> {
        let error = |field: String, message: String| {
            let mut path = vec![Seg::Key(self.name)];
            path.extend(field_path(&field));
            let (line, column) = (self.locate)(&path).unzip();
            ConfigError::Parse {
                at: format!("{}.{}.{field}", self.key, self.name),
                message,
                file: None,
                line,
                column,
            }
        };
        match entry.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) if table && !v.is_object() => {
                Err(error(field.to_owned(), "expected an object".to_owned()))
            }
            Some(v) => serde_path_to_error::deserialize(v).map(Some).map_err(|e| {
                let inner = e.path().to_string();
                let at = match inner.as_str() {
                    "" | "." => field.to_owned(),
                    _ => format!("{field}.{inner}"),
                };
                error(at, e.into_inner().to_string())
            }),
        }
    }
}

/// A usable service name for a client's server key: every character
/// outside `A-Z a-z 0-9 _ -` becomes `_`, at most 64 characters, and a
/// number appended if `taken` says the name is already used.
fn service_name(given: &str, taken: impl Fn(&str) -> bool) -> String {
    let mut base: String = given
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    if base.is_empty() {
        base.push_str("server");
    }
    if base == given || !taken(&base) {
        return base;
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|n| !taken(n))
        .expect("some number is free")
}
