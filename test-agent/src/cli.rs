//! The command line, parsed by hand: five flags do not need a parser crate.

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;

pub const USAGE: &str =
    "usage: carapace-test-agent --state DIR [--config FILE] [--port P] [--boot-ms N]
       carapace-test-agent --validate --config FILE";

/// What the agent was asked to do.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Serve until stopped, crashed or hung on purpose.
    Run(RunArgs),
    /// Check a config file the way `openclaw config validate --json` does, then exit.
    Validate {
        config: PathBuf,
    },
    Help,
}

#[derive(Debug, PartialEq)]
pub struct RunArgs {
    pub state: PathBuf,
    pub config: Option<PathBuf>,
    /// Overrides the config's `port`.
    pub port: Option<u16>,
    /// Overrides the config's `boot_ms`.
    pub boot_ms: Option<u64>,
}

/// Parses the arguments after the program name; the error is a message for the user.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let mut state = None;
    let mut config = None;
    let mut port = None;
    let mut boot_ms = None;
    let mut validate = false;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--state") => state = Some(PathBuf::from(value(&mut args, "--state")?)),
            Some("--config") => config = Some(PathBuf::from(value(&mut args, "--config")?)),
            Some("--port") => port = Some(number(&mut args, "--port")?),
            Some("--boot-ms") => boot_ms = Some(number(&mut args, "--boot-ms")?),
            Some("--validate") => validate = true,
            Some("-h" | "--help") => return Ok(Command::Help),
            _ => return Err(format!("unexpected argument {}", arg.to_string_lossy())),
        }
    }
    if validate {
        if state.is_some() || port.is_some() || boot_ms.is_some() {
            return Err("--validate takes only --config".to_owned());
        }
        let config = config.ok_or("--validate needs --config FILE")?;
        return Ok(Command::Validate { config });
    }
    let state = state.ok_or("--state DIR is required")?;
    // An empty path would put the session in the working directory without saying so.
    if state.as_os_str().is_empty() {
        return Err("--state must not be empty".to_owned());
    }
    Ok(Command::Run(RunArgs {
        state,
        config,
        port,
        boot_ms,
    }))
}

/// The value after `flag`.
fn value(args: &mut impl Iterator<Item = OsString>, flag: &str) -> Result<OsString, String> {
    args.next().ok_or_else(|| format!("{flag} needs a value"))
}

/// The value after `flag`, as a number of type `T`.
fn number<T: FromStr>(args: &mut impl Iterator<Item = OsString>, flag: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let raw = value(args, flag)?;
    let text = raw.to_string_lossy();
    text.parse()
        .map_err(|e| format!("{flag}: {text:?} is not a valid number: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn a_full_run_command_line_is_parsed() {
        let command = parse_str(&[
            "--state",
            "s",
            "--config",
            "c.json",
            "--port",
            "8080",
            "--boot-ms",
            "5",
        ]);
        assert_eq!(
            command,
            Ok(Command::Run(RunArgs {
                state: "s".into(),
                config: Some("c.json".into()),
                port: Some(8080),
                boot_ms: Some(5),
            }))
        );
    }

    #[test]
    fn validate_needs_a_config_and_nothing_else() {
        assert_eq!(
            parse_str(&["--validate", "--config", "c.json"]),
            Ok(Command::Validate {
                config: "c.json".into()
            })
        );
        assert!(parse_str(&["--validate"]).is_err());
        assert!(parse_str(&["--validate", "--config", "c", "--port", "1"]).is_err());
    }

    #[test]
    fn bad_command_lines_are_refused_with_a_message() {
        assert!(parse_str(&[]).unwrap_err().contains("--state"));
        assert!(
            parse_str(&["--state"])
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(parse_str(&["--state", "s", "--port", "70000"]).is_err());
        assert!(parse_str(&["--state", "s", "--port", "http"]).is_err());
        assert!(parse_str(&["--state", "s", "--verbose"]).is_err());
        assert!(parse_str(&["--state", ""]).is_err());
    }
}
