//! Confinement settings of a service: which tools it may offer, its
//! resource limits and its Landlock sandbox.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::tool::Tool;

/// Which of a service's own tool names are registered (`tools = { allow,
/// deny }`): glob patterns (`*`, `?`, `[abc]`, `{a,b}`) matched against
/// the whole name, before any `prefix`.
///
/// A tool is kept when `allow` is absent or one of its patterns matches,
/// and no pattern of `deny` matches. Hidden tools are not registered:
/// calls to them fail as unknown tools and never reach the service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ToolFilter {
    /// Patterns of the tools kept; absent: every tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// Patterns of the tools hidden, even when `allow` matches them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl ToolFilter {
    /// A filter keeping only the tools `allow` matches.
    pub fn allow(patterns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ToolFilter {
            allow: Some(patterns.into_iter().map(Into::into).collect()),
            deny: Vec::new(),
        }
    }

    /// Also hides the tools `patterns` match.
    pub fn deny(mut self, patterns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.deny.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// The compiled patterns; an error names the list (`tools.allow` or
    /// `tools.deny`) and the pattern.
    pub(crate) fn compile(&self) -> Result<CompiledFilter, (&'static str, String)> {
        let set = |field: &'static str, patterns: &[String]| {
            let mut builder = globset::GlobSetBuilder::new();
            for p in patterns {
                let glob = globset::GlobBuilder::new(p)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| (field, format!("has a bad pattern {p:?}: {}", e.kind())))?;
                builder.add(glob);
            }
            builder
                .build()
                .map_err(|e| (field, format!("cannot be compiled: {e}")))
        };
        Ok(CompiledFilter {
            allow: match &self.allow {
                Some(allow) => Some(set("tools.allow", allow)?),
                None => None,
            },
            deny: set("tools.deny", &self.deny)?,
        })
    }

    /// `tools` split into those kept and the names of those hidden.
    ///
    /// # Panics
    ///
    /// If a pattern is bad: the configuration was not validated.
    pub fn apply(&self, tools: Vec<Tool>) -> (Vec<Tool>, Vec<String>) {
        let filter = self
            .compile()
            .expect("a validated configuration has good patterns");
        let (kept, hidden): (Vec<Tool>, Vec<Tool>) =
            tools.into_iter().partition(|t| filter.keeps(&t.name));
        (kept, hidden.into_iter().map(|t| t.name).collect())
    }
}

impl ToolFilter {
    /// The patterns of `allow` and `deny` that match none of `names` (a
    /// common mistake: writing a tool's prefixed name).
    pub fn unmatched<'a>(&'a self, names: &[&str]) -> Vec<&'a str> {
        self.allow
            .iter()
            .flatten()
            .chain(&self.deny)
            .filter(|p| {
                globset::GlobBuilder::new(p)
                    .literal_separator(false)
                    .build()
                    .is_ok_and(|g| {
                        let g = g.compile_matcher();
                        !names.iter().any(|n| g.is_match(n))
                    })
            })
            .map(String::as_str)
            .collect()
    }
}

impl fmt::Display for ToolFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tools")?;
        if let Some(allow) = &self.allow {
            write!(f, " allow [{}]", allow.join(", "))?;
        }
        if !self.deny.is_empty() {
            write!(f, " deny [{}]", self.deny.join(", "))?;
        }
        Ok(())
    }
}

/// A [`ToolFilter`] ready to match.
pub(crate) struct CompiledFilter {
    allow: Option<globset::GlobSet>,
    deny: globset::GlobSet,
}

impl CompiledFilter {
    fn keeps(&self, name: &str) -> bool {
        self.allow.as_ref().is_none_or(|a| a.is_match(name)) && !self.deny.is_match(name)
    }
}

/// Resource limits of a service's process (`limits = { … }`), applied
/// with `setrlimit` in the child before it runs its binary. Each absent
/// limit is left as the host's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Limits {
    /// Data memory (`RLIMIT_DATA`: heap and private writable mappings,
    /// not address space), as `"512MiB"` or a number of bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// CPU time (`RLIMIT_CPU`), as `"60s"`: past it the process gets
    /// SIGXCPU, and SIGKILL 5 seconds of CPU later.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_time: Option<Duration>,
    /// Open descriptors (`RLIMIT_NOFILE`, soft and hard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    /// Processes of the user (`RLIMIT_NPROC`): counted per user id, not
    /// per service, and ignored for root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// The size of any file it writes (`RLIMIT_FSIZE`), as `"1GiB"` or a
    /// number of bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<ByteSize>,
}

impl Limits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// Sets the data memory limit.
    pub fn memory(mut self, bytes: u64) -> Self {
        self.memory = Some(ByteSize(bytes));
        self
    }

    /// Sets the CPU time limit.
    pub fn cpu_time(mut self, time: Duration) -> Self {
        self.cpu_time = Some(time);
        self
    }

    /// Sets the descriptor limit.
    pub fn open_files(mut self, n: u64) -> Self {
        self.open_files = Some(n);
        self
    }

    /// Sets the process limit.
    pub fn processes(mut self, n: u64) -> Self {
        self.processes = Some(n);
        self
    }

    /// Sets the file size limit.
    pub fn file_size(mut self, bytes: u64) -> Self {
        self.file_size = Some(ByteSize(bytes));
        self
    }
}

/// A number of bytes, written in configuration files as a number or as a
/// number and a unit, case-insensitive:
///
/// - one letter, `K`, `M`, `G`, `T`, `P`: powers of 1024, as systemd and
///   docker read them (`"512M"` is 512 MiB);
/// - `KiB`, `MiB`, `GiB`, `TiB`, `PiB` (or `Ki`, `Mi`, …): powers of 1024;
/// - `kB`, `MB`, `GB`, `TB`, `PB`: powers of 1000;
/// - `B` or nothing: bytes.
///
/// The units with more than one letter are read by the `bytesize` crate.
/// A fraction is allowed when the result is a whole number of bytes
/// (`"1.5KiB"`, not `"1.9"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"512MiB"`, `"512M"`, `"1 GB"`, `"4096"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let unit = unit.trim();
        let not_a_size =
            || format!("{text:?} is not a size: write a number and a unit, such as \"512MiB\"");
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(not_a_size());
        }
        let size: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" => 1 << 10,
            "m" => 1 << 20,
            "g" => 1 << 30,
            "t" => 1 << 40,
            "p" => 1 << 50,
            _ => format!("1 {unit}")
                .parse::<bytesize::ByteSize>()
                .map_err(|_| {
                    format!("{unit:?} is not a unit of size: use B, K, M, G, T (powers of 1024, as systemd), KiB, MiB, GiB, TiB, or kB, MB, GB, TB (powers of 1000)")
                })?
                .as_u64(),
        };
        let too_large = || format!("{text:?} is too large");
        // Exact decimal arithmetic: digits times the unit, over the
        // fraction's power of ten.
        let scale = u32::try_from(fraction.len())
            .ok()
            .and_then(|n| 10u128.checked_pow(n))
            .ok_or_else(too_large)?;
        let digits: u128 = format!("{whole}{fraction}")
            .parse()
            .map_err(|_| too_large())?;
        let bytes = digits.checked_mul(u128::from(size)).ok_or_else(too_large)?;
        if bytes % scale != 0 {
            return Err(format!("{text:?} is not a whole number of bytes"));
        }
        u64::try_from(bytes / scale)
            .map(ByteSize)
            .map_err(|_| too_large())
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if n >= size && n.is_multiple_of(size) {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size, such as \"512MiB\", or a number of bytes")
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }

        d.deserialize_any(Visitor)
    }
}

/// Deserializes a table only: the derived `Deserialize` of a struct also
/// takes a sequence of its fields in order (`limits = ["1MiB"]`), which a
/// configuration must not.
pub(crate) fn table<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Visitor<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }

    d.deserialize_map(Visitor(std::marker::PhantomData))
}

/// [`table`] for an optional field (with `#[serde(default)]`).
pub(crate) fn optional_table<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    table(d).map(Some)
}

/// A Landlock sandbox (`[services.<name>.sandbox]`): what the process may
/// read, write and connect to, enforced by the kernel (Linux 5.13+,
/// TCP rules 6.7+).
///
/// Beyond `read` and `write`, the process may always read and run its
/// binary (that file, symbolic links resolved, not its folder) and the
/// system's programs and libraries (`/usr`, `/lib`, `/lib64`, `/bin`,
/// `/sbin`, `/etc/ld.so.cache`, `/etc/ssl`, `/etc/locale.alias`), read the
/// name resolution files (`/etc/hosts`, `/etc/resolv.conf`,
/// `/etc/nsswitch.conf`, `/etc/host.conf`, `/etc/gai.conf`), read and
/// write `/dev/null`, and make its socket in the services folder (nothing
/// else there). Its log file is opened by the host and needs no rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Sandbox {
    /// Absolute paths it may read and run beneath.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<PathBuf>,
    /// Absolute paths it may read and write beneath (not execute: list
    /// a path in `read` too for that).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write: Vec<PathBuf>,
    /// Whether it may connect and bind TCP sockets (default true). False
    /// needs Landlock ABI 4 (Linux 6.7); UDP is not restricted before ABI
    /// 10.
    #[serde(default = "super::yes")]
    pub network: bool,
    /// Whether starting must fail when the kernel cannot enforce the
    /// sandbox (default false: a warning, once, and it runs unconfined;
    /// also when applying it fails in the child, which the status cannot
    /// show).
    #[serde(default)]
    pub required: bool,
    /// Tests only: behave as if the kernel had no Landlock.
    #[doc(hidden)]
    #[serde(skip)]
    pub simulate_no_landlock: bool,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            read: Vec::new(),
            write: Vec::new(),
            network: true,
            required: false,
            simulate_no_landlock: false,
        }
    }
}

impl Sandbox {
    /// Adds folders (or files) it may read beneath.
    pub fn read(mut self, paths: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        self.read.extend(paths.into_iter().map(Into::into));
        self
    }

    /// Adds folders (or files) it may write beneath.
    pub fn write(mut self, paths: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        self.write.extend(paths.into_iter().map(Into::into));
        self
    }

    /// Sets whether TCP is allowed.
    pub fn network(mut self, network: bool) -> Self {
        self.network = network;
        self
    }

    /// Sets whether the start fails when the sandbox cannot be enforced.
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("512MiB"), Ok(ByteSize(512 << 20)));
        assert_eq!(ByteSize::parse("1 GB"), Ok(ByteSize(1_000_000_000)));
        assert_eq!(ByteSize::parse("1.5KiB"), Ok(ByteSize(1536)));
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert_eq!(ByteSize::parse("512M"), Ok(ByteSize(512 << 20)));
        assert_eq!(ByteSize::parse("2g"), Ok(ByteSize(2 << 30)));
        assert_eq!(ByteSize::parse("1 gib"), Ok(ByteSize(1 << 30)));
        assert_eq!(ByteSize::parse("3 kb"), Ok(ByteSize(3000)));
        assert!(ByteSize::parse("1.9").is_err());
        assert!(ByteSize::parse("1.5B").is_err());
        assert!(ByteSize::parse(".").is_err());
        assert!(ByteSize::parse("1.2.3K").is_err());
        assert!(ByteSize::parse("99999999999999999999T").is_err());
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("MiB").is_err());
        assert_eq!(ByteSize(512 << 20).to_string(), "512MiB");
    }

    #[test]
    fn deny_wins_over_allow() {
        let filter = ToolFilter::allow(["web_*"]).deny(["web_admin"]);
        let tool = |n: &str| Tool::new(n, "", serde_json::json!({"type": "object"}));
        let (kept, hidden) = filter.apply(vec![tool("web_get"), tool("web_admin"), tool("shell")]);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].name, "web_get");
        assert_eq!(hidden, ["web_admin", "shell"]);
    }
}
