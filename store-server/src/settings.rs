//! Where each setting comes from: a flag, else the environment
//! (`ZEOLITE_` and the flag's name in upper snake case, e.g.
//! `ZEOLITE_MAX_SESSIONS`), else the `--config` file (TOML, keys named as
//! the flags: `max-sessions = 100`), else the built-in default.
//!
//! The file's values become the flags' defaults and every flag gains its
//! environment variable, so clap applies the order itself; an unknown key
//! in the file is an error that names it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _};

use crate::cli::Cli;

/// The flag naming the file.
const CONFIG_FLAG: &str = "config";
/// Flags no file or variable sets.
const NOT_SETTINGS: [&str; 3] = [CONFIG_FLAG, "help", "version"];

/// The parsed command line, with what each setting's value came from.
pub struct Parsed {
    /// The command line.
    pub cli: Cli,
    /// For `config print`: every setting of `run`, as `(flag, value,
    /// source)`; empty otherwise.
    pub effective: Vec<(String, String, &'static str)>,
}

/// Parses `args` (the program name first) as `store-server` does, layering
/// the environment and the `--config` file under the flags. On a usage
/// error, the error clap would print; on a bad file, a message.
pub fn parse(args: Vec<OsString>) -> Result<Parsed, SettingsError> {
    let file = config_path(&args)
        .map(|path| load(&path).map(|table| (path, table)))
        .transpose()?;
    let mut command = Cli::command();
    let table = file.as_ref().map(|(_, t)| t);
    command = layered(command, table);
    for name in ["run", "witness"] {
        command = command.mut_subcommand(name, |c| layered(c, table));
    }
    command = command.mut_subcommand("config", |c| {
        c.mut_subcommand("print", |c| layered(c, table))
    });
    let matches = command
        .try_get_matches_from(args)
        .map_err(SettingsError::Usage)?;
    let cli = Cli::from_arg_matches(&matches).map_err(SettingsError::Usage)?;
    let subcommand = settings_path(&matches);
    if let Some((path, table)) = &file {
        check_keys(&Cli::command(), &subcommand, path, table)?;
    }
    // Only `config print` shows them; nothing else pays for working them out.
    let effective = if subcommand.first().is_some_and(|c| c == "config") {
        let from_file = |long: &str| table.is_some_and(|t| t.contains_key(long));
        effective(
            &Cli::command(),
            &subcommand,
            leaf_matches(&matches),
            from_file,
        )
    } else {
        Vec::new()
    };
    Ok(Parsed { cli, effective })
}

/// Each setting's value in `matches` and where it came from.
fn effective(
    command: &clap::Command,
    subcommand: &[String],
    matches: &ArgMatches,
    from_file: impl Fn(&str) -> bool,
) -> Vec<(String, String, &'static str)> {
    settings_of(command, subcommand)
        .map(|(arg, long)| {
            let id = arg.get_id().as_str();
            let value = matches
                .try_get_raw(id)
                .ok()
                .flatten()
                .map(|v| {
                    v.map(|s| s.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let source = match matches.value_source(id) {
                Some(ValueSource::CommandLine) => "flag",
                Some(ValueSource::EnvVariable) => "environment",
                Some(ValueSource::DefaultValue) if from_file(long) => "file",
                _ => "default",
            };
            (long.to_string(), value, source)
        })
        .collect()
}

/// The settings of the subcommand at `subcommand` (its own flags and the
/// global ones), each with its flag name: every flag but those that are
/// not settings.
fn settings_of<'a>(
    command: &'a clap::Command,
    subcommand: &[String],
) -> impl Iterator<Item = (&'a clap::Arg, &'a str)> {
    let leaf = leaf_command(command, subcommand);
    // At the top level the globals are the leaf's own already.
    let globals = command
        .get_arguments()
        .filter(move |a| a.is_global_set() && !std::ptr::eq(leaf, command));
    leaf.get_arguments()
        .chain(globals)
        .filter_map(|arg| setting_name(arg).map(|long| (arg, long)))
}

/// The flag name of `arg` if it is a setting (a file or variable may set it).
fn setting_name(arg: &clap::Arg) -> Option<&str> {
    arg.get_long().filter(|long| !NOT_SETTINGS.contains(long))
}

/// What went wrong reading the settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Bad flags: clap's own message (and `--help`, `--version`).
    #[error("{0}")]
    Usage(clap::Error),
    /// The `--config` file is unreadable, not TOML, or names no setting.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

/// The value of `--config FILE` or `--config=FILE`, if given.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// Where the settings of the parsed subcommand are declared: `witness`'s
/// own, `config print`'s (those of `run`), or the top level's (those of
/// `run`, also for `run` itself and for commands that take none).
fn settings_path(matches: &ArgMatches) -> Vec<String> {
    match matches.subcommand_name() {
        Some("witness") => vec!["witness".into()],
        Some("config") => vec!["config".into(), "print".into()],
        _ => Vec::new(),
    }
}

fn leaf_command<'a>(command: &'a clap::Command, path: &[String]) -> &'a clap::Command {
    path.iter()
        .fold(command, |c, name| c.find_subcommand(name).unwrap_or(c))
}

fn leaf_matches(matches: &ArgMatches) -> &ArgMatches {
    match matches.subcommand() {
        Some((_, sub)) => leaf_matches(sub),
        None => matches,
    }
}

/// Reads the file as a table of `flag = value`.
fn load(path: &Path) -> Result<BTreeMap<String, String>, SettingsError> {
    let bad = |detail: String| SettingsError::File {
        path: path.to_path_buf(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(e.to_string()))?;
    table
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(bad(format!(
                        "`{key}` must be a string, number or boolean, not {}",
                        other.type_str()
                    )))
                }
            };
            Ok((key, value))
        })
        .collect()
}

/// Every key of the file must be a setting of the subcommand run.
fn check_keys(
    command: &clap::Command,
    subcommand: &[String],
    path: &Path,
    table: &BTreeMap<String, String>,
) -> Result<(), SettingsError> {
    let known: Vec<&str> = settings_of(command, subcommand)
        .map(|(_, long)| long)
        .collect();
    match table.keys().find(|key| !known.contains(&key.as_str())) {
        None => Ok(()),
        Some(key) => Err(SettingsError::File {
            path: path.to_path_buf(),
            detail: format!(
                "unknown key `{key}`: not a flag of `store-server {}` (keys are flag names, e.g. `max-sessions`)",
                match subcommand.first().map(String::as_str) {
                    Some("witness") => "witness",
                    _ => "run",
                }
            ),
        }),
    }
}

/// Gives each setting its environment variable and the file's value as
/// its default.
fn layered(command: clap::Command, file: Option<&BTreeMap<String, String>>) -> clap::Command {
    command.mut_args(|arg| {
        let Some(long) = setting_name(&arg).map(str::to_string) else {
            return arg;
        };
        let env = format!("ZEOLITE_{}", long.to_uppercase().replace('-', "_"));
        let arg = arg.env(env);
        match file.and_then(|t| t.get(&long)) {
            Some(value) => arg.default_value(value.clone()),
            None => arg,
        }
    })
}
