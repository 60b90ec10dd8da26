//! The `sftpgw` command line: parse, wire, and map errors to exit codes.
//!
//! Exit codes: 0 success; 1 runtime failure; 2 usage error (from clap); 3 invalid configuration;
//! 4 the daemon could not be reached on its control socket; 5 (`status` only) the daemon is
//! not running and the status shown was read from the journal.
//!
//! It uses the library's public API only (`sftpgw::...`), and holds no rule a test would need:
//! what a command does lives in the library; here is parsing, wiring and printing.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sftpgw::config::{Config, Rate};
use sftpgw::status::control::{self, ControlError, Request, Response};
use sftpgw::status::render::render_text;

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 3;
const EXIT_UNREACHABLE: u8 = 4;
const EXIT_DAEMON_DOWN: u8 = 5;

/// `sftpgw status` found no daemon and showed the journal's state instead.
#[derive(Debug, thiserror::Error)]
#[error("the daemon is not running ({0}); the status above is from the journal")]
struct DaemonDown(String);

#[derive(Parser)]
#[command(
    name = "sftpgw",
    version,
    about = "SFTP to S3 transfer gateway: durable spool, crash-safe multipart drain"
)]
struct Cli {
    /// The configuration file, accepted before or after any subcommand (also from
    /// SFTPGW_CONFIG). `run`, `status`, `retry` and `drain` need it; `console` and `banner`
    /// default to /etc/sftpgw.toml.
    #[arg(long, short, global = true, env = "SFTPGW_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a configuration file.
    Run,
    /// Run the gateway with an embedded S3 server on loopback, for trying it out.
    Demo {
        /// Where the demo keeps its config, keys, spool and S3 data.
        #[arg(long, default_value = "sftpgw-demo")]
        dir: PathBuf,
        /// SFTP port on 127.0.0.1.
        #[arg(long, default_value_t = 2222)]
        port: u16,
        /// S3 port on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 9000)]
        s3_port: u16,
    },
    /// Show what the running gateway is doing: every file's state, queue and spool use.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Also list delivered files.
        #[arg(long)]
        all: bool,
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// List files by state, oldest first, page by page from the running daemon (status shows
    /// at most 256): each line is the file's id, state, size and user:/path.
    Files {
        /// A state to list; repeat for more (default: all but delivered).
        #[arg(long = "state", value_enum)]
        states: Vec<StateArg>,
        /// Only files with a larger id (newer) than ID: where an earlier listing stopped.
        #[arg(long, value_name = "ID")]
        after: Option<u64>,
        /// Stop after this many files in all (default: every one).
        #[arg(long)]
        limit: Option<u64>,
        /// One JSON object per file and line.
        #[arg(long)]
        json: bool,
    },
    /// Every file delivered to S3, one line each, from the delivery log on the spool (works
    /// with the daemon stopped too): time, user, path, bucket, key, size, SHA-256, ETag,
    /// version id, sealed time, box.
    Report {
        /// Deliveries at or after this date (2026-12-06, midnight UTC) or time (RFC 3339).
        #[arg(long, value_parser = sftpgw::report::parse_time)]
        since: Option<String>,
        /// Deliveries before this date or time.
        #[arg(long, value_parser = sftpgw::report::parse_time)]
        until: Option<String>,
        /// Only this user's files.
        #[arg(long)]
        user: Option<String>,
        /// `csv` (with a header line) or `json` (one object per line).
        #[arg(long, default_value = "csv")]
        format: ReportFormat,
    },
    /// Follow the daemon's lifecycle events as JSON lines (sealed, upload_started, delivered,
    /// failed, conflict, partial, expired, retried, quarantined) until interrupted.
    Events {
        /// Keep following (the only mode: events are not stored).
        #[arg(long)]
        follow: bool,
    },
    /// Queue failed files again (all of them, or one user's below PATH).
    Retry {
        #[arg(long)]
        user: Option<String>,
        path: Option<String>,
    },
    /// Sealed files the journal could not explain (after a damaged or lost journal): list
    /// them, deliver one, or delete one.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// Sources on the LAN refused for a while after repeated failed logins, negotiations or
    /// grace timeouts: list them, or lift a ban.
    Bans {
        #[command(subcommand)]
        command: BansCommand,
    },
    /// Steer the drain's WAN rate at run time (an override of the `[shaping]` schedule that
    /// survives a restart until it expires).
    Drain {
        #[command(subcommand)]
        command: DrainCommand,
    },
    /// The serial console's menu (the login shell of the ops user): status, drain control,
    /// failed files, network, diagnostics, reboot; no shell.
    Console {
        /// Where diagnostics bundles go when no USB stick is mounted at /media/usb
        /// (default: the `diagnostics` directory next to the spool directory).
        #[arg(long, env = "SFTPGW_DIAGNOSTICS_DIR")]
        diagnostics_dir: Option<PathBuf>,
        /// The file whose creation asks the root-owned watcher to reboot the box.
        #[arg(long, env = "SFTPGW_REBOOT_REQUEST", default_value = sftpgw::console::REBOOT_REQUEST_DEFAULT)]
        reboot_request: PathBuf,
    },
    /// The text shown above the serial console's login prompt: name, addresses, health, queue.
    Banner {
        /// Write the banner to FILE, only when its text changed (default: print it).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Keep refreshing FILE every few seconds (needs --out).
        #[arg(long, requires = "out")]
        watch: bool,
        /// With --watch: run this shell command after each change (e.g. to make the getty
        /// print its prompt again).
        #[arg(long, requires = "watch")]
        on_change: Option<String>,
    },
    /// Validate a configuration file (FILE, or the one of --config).
    CheckConfig { file: Option<PathBuf> },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Csv,
    Json,
}

/// A file state on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
enum StateArg {
    Receiving,
    Partial,
    Sealed,
    Uploading,
    Failed,
    Conflict,
    Delivered,
}

impl From<StateArg> for sftpgw::spool::FileState {
    fn from(s: StateArg) -> Self {
        use sftpgw::spool::FileState as F;
        match s {
            StateArg::Receiving => F::Receiving,
            StateArg::Partial => F::Partial,
            StateArg::Sealed => F::Sealed,
            StateArg::Uploading => F::Uploading,
            StateArg::Failed => F::Failed,
            StateArg::Conflict => F::Conflict,
            StateArg::Delivered => F::Delivered,
        }
    }
}

#[derive(Subcommand)]
enum DrainCommand {
    /// Start no new part (parts in flight finish) until `resume` or for a while.
    Pause {
        /// How long, like "2h" or "30m"; default: until `sftpgw drain resume`.
        #[arg(long = "for", value_parser = sftpgw::config::parse_duration)]
        duration: Option<Duration>,
    },
    /// End the override: the configured schedule applies again.
    Resume,
    /// Set the rate: "5MiB/s", "unlimited" or "paused".
    Rate {
        #[arg(value_parser = Rate::parse)]
        rate: Rate,
        /// How long, like "2h"; default: until `sftpgw drain resume`.
        #[arg(long = "for", value_parser = sftpgw::config::parse_duration)]
        duration: Option<Duration>,
    },
}

#[derive(Subcommand)]
enum BansCommand {
    /// Each banned source (an address, or an IPv6 /64), how long it stays banned, and how
    /// many bans it had within a day.
    List,
    /// Lift the ban of one source (any address of it), or of every source.
    Clear { source: Option<String> },
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// Each quarantined file: name, size, what its identity says, why it is there.
    List,
    /// Seal a quarantined file as a new upload: where its identity says, or `--as`.
    Deliver {
        name: String,
        /// Where it goes: `USER:/PATH` (needed when the file carries no identity).
        #[arg(long = "as", value_name = "USER:/PATH")]
        target: Option<String>,
    },
    /// Delete a quarantined file for good.
    Delete { name: String },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Print an argon2id hash for `password_hash`, reading the password from standard input.
    Passwd,
}

/// glibc malloc arenas. With one per thread (its default, up to 8 per core) the buffers of
/// 64 uploading sessions, freed on other threads than they were allocated on, left the peak
/// RSS at 62–73 MiB; with one arena it stays at 53 MiB, at the same speed (bench/memory.sh,
/// README). Most allocations of the data path are 32–256 KiB buffers, few and large, so the
/// shared arena's lock is not contended.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS_COUNT_MAX: nix::libc::c_int = 1;

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a glibc tunable; called before any other thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, MALLOC_ARENAS_COUNT_MAX);
    }
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(()) => {
            tracing::debug!("exiting normally");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sftpgw: {e:#}");
            if e.downcast_ref::<DaemonDown>().is_some() {
                ExitCode::from(EXIT_DAEMON_DOWN)
            } else if e.downcast_ref::<sftpgw::config::ConfigError>().is_some() {
                ExitCode::from(EXIT_CONFIG)
            } else if matches!(
                e.downcast_ref::<ControlError>(),
                Some(ControlError::Connect(..))
            ) {
                ExitCode::from(EXIT_UNREACHABLE)
            } else {
                ExitCode::from(EXIT_RUNTIME)
            }
        }
    }
}

/// Logs go to standard error, without colours, hostile characters of names escaped (see
/// `sftpgw::names`). Under systemd (`JOURNAL_STREAM` set: stderr is connected to journald)
/// lines carry no timestamp of their own and start with a `<N>` syslog priority, which
/// journald reads as the line's priority (see `sftpgw::logfmt`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SFTPGW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Names from the LAN are escaped in every line, so no colours: their escape sequences
    // could not be told from a name's.
    use tracing_subscriber::prelude::*;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(sftpgw::logfmt::EscapingStderr)
        .with_ansi(false);
    let fmt = if std::env::var_os("JOURNAL_STREAM").is_some() {
        fmt.event_format(sftpgw::logfmt::Journald::default())
            .boxed()
    } else {
        fmt.boxed()
    };
    // The log level filters the log only: `sftpgw events` sees lifecycle events at any level.
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(sftpgw::events::layer())
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The `--config` file, which `command` needs: a usage error (exit 2) without one.
fn required_config(config: Option<PathBuf>, command: &str) -> PathBuf {
    config.unwrap_or_else(|| {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                format!("`sftpgw {command}` needs --config FILE (or SFTPGW_CONFIG)"),
            )
            .exit()
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = cli.config;
    // The configuration of a command that needs one (a usage error without it).
    let load = |command| Config::load(&required_config(config_path.clone(), command));
    let console_config = || {
        config_path
            .clone()
            .unwrap_or_else(|| sftpgw::console::CONFIG_PATH_DEFAULT.into())
    };
    match cli.command {
        Command::Run => {
            let config = load("run")?;
            runtime()?.block_on(async {
                sftpgw::gateway::run(config, shutdown_signal(), sftpgw::health::ready)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))
            })
        }
        Command::Demo { dir, port, s3_port } => runtime()?
            .block_on(sftpgw::demo::run(&dir, port, s3_port, shutdown_signal()))
            .map_err(|e| anyhow::anyhow!(e)),
        Command::Status { json, all, watch } => {
            let config = load("status")?;
            runtime()?.block_on(status(&config, json, all, watch))
        }
        Command::Files {
            states,
            after,
            limit,
            json,
        } => files(&load("files")?.control.socket, &states, after, limit, json),
        Command::Report {
            since,
            until,
            user,
            format,
        } => {
            let config = load("report")?;
            report(
                &config,
                sftpgw::report::Filter { since, until, user },
                format,
            )
        }
        Command::Events { follow } => {
            if !follow {
                bail!("events are not stored: `sftpgw events --follow` shows them as they happen");
            }
            let config = load("events")?;
            follow_events(&config.control.socket)
        }
        Command::Retry { user, path } => retry(&load("retry")?.control.socket, user, path),
        Command::Quarantine { command } => quarantine(&load("quarantine")?.control.socket, command),
        Command::Bans { command } => bans(&load("bans")?.control.socket, command),
        Command::Drain { command } => drain(&load("drain")?.control.socket, command),
        Command::Console {
            diagnostics_dir,
            reboot_request,
        } => sftpgw::console::run(&sftpgw::console::ConsoleOptions {
            config_path: console_config(),
            diagnostics_dir,
            reboot_request,
        })
        .context("console"),
        Command::Banner {
            out,
            watch,
            on_change,
        } => runtime()?
            .block_on(sftpgw::console::banner::run(
                &console_config(),
                out.as_deref(),
                watch,
                on_change.as_deref(),
            ))
            .context("banner"),
        Command::CheckConfig { file } => check_config(file, config_path),
        Command::User {
            command: UserCommand::Passwd,
        } => print_password_hash(),
    }
}

/// `sftpgw user passwd`: reads a password and prints the hash a `[[users]]` entry takes.
fn print_password_hash() -> anyhow::Result<()> {
    let password = read_password()?;
    println!("{}", sftpgw::sftp::namespace::hash_password(&password));
    Ok(())
}

/// `sftpgw check-config [FILE]`: loads the configuration and says what it found.
fn check_config(file: Option<PathBuf>, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let file = file.unwrap_or_else(|| required_config(config_path, "check-config"));
    let config = Config::load(&file)?;
    println!(
        "{}: OK ({} users, bucket {}, spool {})",
        file.display(),
        config.users.len(),
        config.s3.bucket,
        config.spool.dir.display()
    );
    Ok(())
}

/// `sftpgw report`: the delivery log as CSV or JSON on stdout. A closed pipe ends it quietly.
fn report(
    config: &Config,
    filter: sftpgw::report::Filter,
    format: ReportFormat,
) -> anyhow::Result<()> {
    let format = match format {
        ReportFormat::Csv => sftpgw::report::Format::Csv,
        ReportFormat::Json => sftpgw::report::Format::Json,
    };
    let mut out = std::io::stdout().lock();
    match sftpgw::report::write(&config.spool.dir, &filter, format, &mut out) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r
            .map(|_| ())
            .with_context(|| format!("reading the delivery log in {}", config.spool.dir.display())),
    }
}

/// `sftpgw events --follow`: the daemon's lifecycle events as they happen, one JSON object a
/// line, until Ctrl-C or a closed pipe.
fn follow_events(socket: &Path) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let started = || eprintln!("following the daemon's events (Ctrl-C ends)");
        let result = control::follow_events(socket, started, |line| {
            writeln!(out, "{line}")?;
            out.flush()
        })
        .await;
        match result {
            Err(ControlError::Io(_, e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => r.map_err(anyhow::Error::from),
        }
    })
}

/// `sftpgw retry`: asks the daemon to queue failed files again.
fn retry(socket: &Path, user: Option<String>, path: Option<String>) -> anyhow::Result<()> {
    let response = runtime()?.block_on(control::request(socket, &Request::Retry { user, path }))?;
    print_done(control::retried_as_done(response))
}

/// Prints what a `Done` response says; any other response is an error.
fn print_done(response: Response) -> anyhow::Result<()> {
    match response {
        Response::Done { message } => {
            println!("{message}");
            Ok(())
        }
        Response::Error { message } => bail!(message),
        _ => bail!("unexpected response from the daemon"),
    }
}

/// `sftpgw files`: every page of each state asked for, printed as it arrives, so that a
/// million files cost the daemon one bounded page at a time and this process one page of
/// memory. A closed pipe (`| head`) ends it quietly.
fn files(
    socket: &Path,
    states: &[StateArg],
    after: Option<u64>,
    limit: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    use sftpgw::spool::FileState;
    use std::io::Write as _;
    let states: Vec<FileState> = if states.is_empty() {
        sftpgw::spool::PENDING_STATES_LISTED.to_vec()
    } else {
        states.iter().map(|s| FileState::from(*s)).collect()
    };
    let rt = runtime()?;
    let mut out = std::io::stdout().lock();
    let mut left = limit.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    for state in states {
        let mut cursor = after;
        while left > 0 {
            let request = Request::Files {
                state,
                after: cursor,
                limit: Some(usize::try_from(left).unwrap_or(usize::MAX)),
            };
            let (page, next) = match rt.block_on(control::request(socket, &request))? {
                Response::Files { files, next, .. } => (files, next),
                Response::Error { message } => bail!(message),
                _ => bail!("unexpected response from the daemon (older than `sftpgw files`?)"),
            };
            for f in &page {
                let written = if json {
                    writeln!(out, "{}", serde_json::to_string(f)?)
                } else {
                    sftpgw::status::render::file_lines(f, &format!("{:>9} ", f.id))
                        .iter()
                        .try_for_each(|l| writeln!(out, "{l}"))
                };
                match written {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    r => r?,
                }
                left = left.saturating_sub(1);
                printed += 1;
            }
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
    }
    if printed == 0 && !json {
        writeln!(out, "no such file").ok();
    }
    Ok(())
}

/// `sftpgw bans ...`: one request; the list, or how many bans were lifted.
fn bans(socket: &Path, command: BansCommand) -> anyhow::Result<()> {
    let request = match command {
        BansCommand::List => Request::BansList,
        BansCommand::Clear { source } => Request::BansClear { source },
    };
    match runtime()?.block_on(control::request(socket, &request))? {
        Response::Bans { bans } => {
            if bans.is_empty() {
                println!("no source is banned");
            }
            for b in &bans {
                println!(
                    "{}  {} s left  ({} ban(s) within a day)",
                    b.source, b.remaining_secs, b.count
                );
            }
            Ok(())
        }
        other => print_done(other),
    }
}

/// `sftpgw quarantine ...`: one request; the list as a table, or one line of result.
fn quarantine(socket: &Path, command: QuarantineCommand) -> anyhow::Result<()> {
    let request = match command {
        QuarantineCommand::List => Request::QuarantineList,
        QuarantineCommand::Deliver { name, target } => {
            let (user, path) = match target {
                Some(target) => {
                    let Some((user, path)) = target.split_once(':') else {
                        bail!("--as takes USER:/PATH, like alice:/scans/page-1.pdf");
                    };
                    (Some(user.to_owned()), Some(path.to_owned()))
                }
                None => (None, None),
            };
            Request::QuarantineDeliver { name, user, path }
        }
        QuarantineCommand::Delete { name } => Request::QuarantineDelete { name },
    };
    match runtime()?.block_on(control::request(socket, &request))? {
        Response::Quarantine { files, count } => {
            if count == 0 {
                println!("the quarantine is empty");
            }
            for f in &files {
                let identity = f.identity.as_ref().map_or_else(
                    || "no identity".to_owned(),
                    |i| {
                        format!(
                            "{}:{}",
                            i.user.escape_debug(),
                            i.path.display().escape_debug()
                        )
                    },
                );
                println!("{}  {} bytes  {identity}  ({})", f.name, f.size, f.reason);
            }
            if count > files.len() {
                println!("... and {} more", count - files.len());
            }
            Ok(())
        }
        other => print_done(other),
    }
}

/// `sftpgw drain ...`: one request, one line of result.
fn drain(socket: &Path, command: DrainCommand) -> anyhow::Result<()> {
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs().max(1));
    let (request, resuming) = match command {
        DrainCommand::Pause { duration }
        | DrainCommand::Rate {
            rate: Rate::Paused,
            duration,
        } => (
            Request::DrainPause {
                for_secs: secs(duration),
            },
            false,
        ),
        DrainCommand::Resume => (Request::DrainResume, true),
        DrainCommand::Rate { rate, duration } => (
            Request::DrainRate {
                bytes_per_sec: rate.limit(),
                for_secs: secs(duration),
            },
            false,
        ),
    };
    let response = runtime()?.block_on(control::request(socket, &request))?;
    match response {
        Response::Shaping(status) => {
            let line = sftpgw::drain::shaper::summary(&status);
            if resuming && status.paused {
                println!(
                    "override ended, but {line}; to drain anyway: sftpgw drain rate RATE --for DURATION"
                );
            } else if resuming {
                println!("override ended: {line}");
            } else {
                println!("{line}");
            }
            Ok(())
        }
        Response::Error { message } => bail!(message),
        _ => bail!("unexpected response from the daemon"),
    }
}

fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password: ");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the password")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}

/// Prints the daemon's status, or the journal's when the daemon does not answer (then fails
/// with [`DaemonDown`], exit code 5, unless watching).
async fn status(config: &Config, json: bool, all: bool, watch: bool) -> anyhow::Result<()> {
    loop {
        let (snapshot, down) =
            match control::request(&config.control.socket, &Request::Status).await {
                Ok(Response::Status(snapshot)) => (*snapshot, None),
                Ok(_) => bail!("unexpected response from the daemon"),
                Err(e @ ControlError::Connect(..)) => {
                    match sftpgw::status::offline::snapshot_from_journal(config) {
                        Ok(offline) => (offline, Some(e.to_string())),
                        // Exit code 4, as for any unreachable daemon.
                        Err(why) => {
                            return Err(anyhow::Error::new(e).context(format!(
                                "the daemon does not answer and the journal cannot be read ({why})"
                            )));
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            };
        if json {
            println!("{}", serde_json::to_string_pretty(&snapshot)?);
        } else {
            if watch {
                // Cursor home and clear screen: plain VT100, which serial terminals understand.
                print!("\x1b[H\x1b[2J");
            }
            print!("{}", render_text(&snapshot, all));
        }
        if !watch {
            return match down {
                Some(why) => Err(DaemonDown(why).into()),
                None => Ok(()),
            };
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => match r {
            Ok(()) => tracing::info!("interrupt received (SIGINT)"),
            Err(e) => tracing::error!(error = %e, "cannot listen for SIGINT; stopping"),
        },
        r = term.recv() => tracing::info!(signal = ?r, "termination requested (SIGTERM)"),
    }
}
