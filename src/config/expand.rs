//! `${VAR}` and `${VAR:-default}` in configuration values, expanded from
//! the host's environment when a file is loaded.

/// Why a value could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExpandError {
    /// `${VAR}` names a variable that is not set and has no default.
    Unset(String),
    /// A `${` with no closing `}`, or an empty name.
    Malformed(String),
}

/// Expands every `${VAR}` and `${VAR:-default}` in `value`, looking
/// variables up with `lookup`. A `$` not followed by `{` is kept as is.
/// With `:-`, the default applies when the variable is unset or empty (as
/// in POSIX shells).
pub(crate) fn expand(
    value: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ExpandError::Malformed(rest[start..].to_owned()))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        // VS Code's spelling of the same thing.
        let name = name.strip_prefix("env:").unwrap_or(name);
        if name.starts_with("input:") {
            return Err(ExpandError::Malformed(format!(
                "${{{inner}}} (VS Code prompts for inputs; exthost cannot: put the value in an environment variable and write ${{NAME}})"
            )));
        }
        if default.is_some_and(|d| d.contains("${")) {
            return Err(ExpandError::Malformed(format!(
                "${{{inner}}} (a default cannot hold another ${{...}})"
            )));
        }
        let valid =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(ExpandError::Malformed(format!("${{{inner}}}")));
        }
        match (lookup(name), default) {
            (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(ExpandError::Unset(name.to_owned())),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/me".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_unset_and_defaults() {
        assert_eq!(expand("${HOME}/x", &env).unwrap(), "/home/me/x");
        assert_eq!(expand("a${NOPE:-b}c", &env).unwrap(), "abc");
        assert_eq!(expand("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(expand("${HOME:-d}", &env).unwrap(), "/home/me");
        assert_eq!(expand("$HOME ${HOME}", &env).unwrap(), "$HOME /home/me");
        assert_eq!(expand("no vars", &env).unwrap(), "no vars");
        assert_eq!(expand("${NOPE:-}", &env).unwrap(), "");
        assert_eq!(expand("${env:HOME}", &env).unwrap(), "/home/me");
    }

    #[test]
    fn refuses_unset_and_malformed() {
        assert_eq!(
            expand("x${NOPE}", &env),
            Err(ExpandError::Unset("NOPE".into()))
        );
        assert!(matches!(
            expand("${HOME", &env),
            Err(ExpandError::Malformed(_))
        ));
        assert!(matches!(
            expand("${}", &env),
            Err(ExpandError::Malformed(_))
        ));
        assert!(matches!(
            expand("${A B}", &env),
            Err(ExpandError::Malformed(_))
        ));
    }
}
