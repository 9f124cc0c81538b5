use std::ffi::OsString;
use std::path::PathBuf;

/// The command line a host starts an extension with:
/// `serve --socket PATH [EXTRA…]`.
///
/// # Example
///
/// ```
/// use exthost::server::ServeArgs;
///
/// let args = ServeArgs::parse(["serve", "--socket", "/tmp/x.sock", "--verbose"])?;
/// assert_eq!(args.socket, std::path::Path::new("/tmp/x.sock"));
/// assert_eq!(args.extra, ["--verbose"]);
/// # Ok::<(), exthost::server::ArgsError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeArgs {
    /// Where to listen.
    pub socket: PathBuf,
    /// Arguments after the protocol's own, for the extension to interpret.
    pub extra: Vec<OsString>,
}

/// A command line that is not `serve --socket PATH [EXTRA…]`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{problem}; usage: <extension> serve --socket PATH [EXTRA...]")]
pub struct ArgsError {
    problem: String,
}

impl ServeArgs {
    /// Parses the process's arguments (without the program name).
    pub fn from_env() -> Result<Self, ArgsError> {
        Self::parse(std::env::args_os().skip(1))
    }

    /// Parses arguments (without the program name).
    pub fn parse<I, S>(args: I) -> Result<Self, ArgsError>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let err = |problem: &str| ArgsError {
            problem: problem.to_owned(),
        };
        let mut args = args.into_iter().map(Into::into);
        match args.next() {
            Some(cmd) if cmd == "serve" => {}
            Some(cmd) => return Err(err(&format!("unknown command {:?}", cmd.to_string_lossy()))),
            None => return Err(err("missing command")),
        }
        let mut socket = None;
        let mut extra = Vec::new();
        while let Some(arg) = args.next() {
            if socket.is_none() && arg == "--socket" {
                let path = args.next().ok_or_else(|| err("--socket needs a path"))?;
                socket = Some(PathBuf::from(path));
            } else if let Some(path) = arg
                .to_str()
                .and_then(|a| a.strip_prefix("--socket="))
                .filter(|_| socket.is_none())
            {
                socket = Some(PathBuf::from(path));
            } else {
                extra.push(arg);
            }
        }
        let socket = socket.ok_or_else(|| err("missing --socket PATH"))?;
        if socket.as_os_str().is_empty() {
            return Err(err("--socket needs a path"));
        }
        Ok(ServeArgs { socket, extra })
    }
}
