//! The serial console of the appliance (`sftpgw console`): the login shell of the `ops` user,
//! a numbered menu for a dumb terminal (80 columns, no curses) and nothing else — no shell.
//!
//! It is a client of the daemon's control socket like `sftpgw status`, and never touches the
//! spool or the drain. What needs root (reboot) goes through a request file that a root-owned
//! watcher acts on (docs/OPERATIONS.md, "The serial console"). Network, diagnostics and
//! reboot work without the daemon.
//!
//! Ctrl-D (end of input) logs out; Ctrl-C brings the menu back and never ends the console;
//! Ctrl-\ and Ctrl-Z are ignored.
//!
//! May use `config` (read only), `status` (the control client and the renderer),
//! `telemetry::hostname` and its submodules; may not touch `spool`, `drain` or `sftp`.

pub mod banner;
pub mod diagnostics;
pub mod input;
pub mod network;

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::spool::FileState;
use crate::status::control::{self, Request, Response, retried_as_done};
use crate::status::render::{human_bytes, human_duration, render_text};
use crate::status::{ShapingStatus, Snapshot};
use input::{Input, LineReader};

/// The configuration the Buildroot image's sftpgw.service runs with.
pub const CONFIG_PATH_DEFAULT: &str = "/data/sftpgw/sftpgw.toml";
/// The daemon's control socket when the configuration cannot be read (the appliance's).
pub const CONTROL_SOCKET_DEFAULT: &str = "/run/sftpgw/control.sock";
/// The file whose creation asks the root-owned watcher to reboot the box.
pub const REBOOT_REQUEST_DEFAULT: &str = "/run/sftpgw-ops/reboot";
/// Fallback for the diagnostics directory when the configuration cannot be read.
pub const DIAGNOSTICS_DIR_DEFAULT: &str = "/data/diagnostics";
/// How long the daemon may take to answer one request.
pub const CONTROL_ANSWER_TIMEOUT_SECS: u64 = 10;
/// How long the console waits for the box to go down after a reboot request.
pub const REBOOT_WAIT_SECS: u64 = 60;
/// Failed files listed at most (and offered for retry one by one).
const FAILED_LISTED_COUNT_MAX: usize = 50;
/// Terminal width the console writes for.
const COLUMNS_COUNT: usize = 80;

/// Where the console finds things; the defaults are the appliance's.
#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// The configuration file the console reads (and the banner shows).
    pub config_path: PathBuf,
    /// Where bundles go when no USB stick is mounted (default `<spool dir>/../diagnostics`).
    pub diagnostics_dir: Option<PathBuf>,
    /// The file whose creation asks the root-owned watcher to reboot the box.
    pub reboot_request: PathBuf,
}

/// What the console knows of the configuration: it still runs when the file is broken.
struct Setup {
    config: Result<Config, String>,
    socket: PathBuf,
    diagnostics_dir: PathBuf,
}

impl Setup {
    fn load(opts: &ConsoleOptions) -> Setup {
        let config = Config::load(&opts.config_path).map_err(|e| e.to_string());
        let socket = config.as_ref().map_or_else(
            |_| PathBuf::from(CONTROL_SOCKET_DEFAULT),
            |c| c.control.socket.clone(),
        );
        let diagnostics_dir = opts.diagnostics_dir.clone().unwrap_or_else(|| {
            config
                .as_ref()
                .ok()
                .and_then(|c| c.spool.dir.parent().map(|p| p.join("diagnostics")))
                .unwrap_or_else(|| PathBuf::from(DIAGNOSTICS_DIR_DEFAULT))
        });
        Setup {
            config,
            socket,
            diagnostics_dir,
        }
    }

    fn endpoint(&self) -> Option<String> {
        let c = self.config.as_ref().ok()?;
        Some(
            c.s3.endpoint
                .clone()
                .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", c.s3.region)),
        )
    }
}

const MENU: &str = concat!(
    "  1) Status                        6) Network\n",
    "  2) Pause the drain               7) Write a diagnostics bundle\n",
    "  3) Resume the drain              8) Reboot the box\n",
    "  4) Set a temporary rate          9) Log out\n",
    "  5) Failed files: list and retry 10) Quarantine: deliver or delete\n",
    "                                  11) LAN bans: list and lift\n",
);
const PROMPT: &str = "choice> ";

pub use crate::telemetry::hostname;

/// Runs the menu on stdin/stdout until the operator logs out or input ends.
pub fn run(opts: &ConsoleOptions) -> std::io::Result<()> {
    input::install_signal_handlers().map_err(std::io::Error::from)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let setup = Setup::load(opts);
    let stdin = std::io::stdin();
    let _foreground = input::Foreground::take(stdin.as_fd());
    let mut reader = LineReader::new(stdin.as_fd());
    let mut out = std::io::stdout().lock();
    let mut console = Console {
        opts,
        setup: &setup,
        rt: &rt,
        reader: &mut reader,
        out: &mut out,
    };
    console.session()
}

struct Console<'a, 'fd, W: Write> {
    opts: &'a ConsoleOptions,
    setup: &'a Setup,
    rt: &'a tokio::runtime::Runtime,
    reader: &'a mut LineReader<'fd>,
    out: &'a mut W,
}

/// What a prompt inside a menu entry got.
enum Answer {
    Text(String),
    /// Ctrl-C or a bad line: back to the menu (the message is printed already).
    Back,
    /// End of input: log out.
    Eof,
}

impl<W: Write> Console<'_, '_, W> {
    fn session(&mut self) -> std::io::Result<()> {
        writeln!(
            self.out,
            "\nsftpgw console on {} - field operations (no shell)",
            hostname()
        )?;
        if let Err(e) = &self.setup.config {
            writeln!(self.out, "WARNING: the configuration cannot be read:")?;
            writeln!(self.out, "  {e}")?;
        }
        loop {
            write!(self.out, "\n{MENU}{PROMPT}")?;
            self.out.flush()?;
            let choice = match self.reader.read_input()? {
                Input::Eof => {
                    writeln!(self.out, "\nend of input: logged out")?;
                    return Ok(());
                }
                Input::Interrupted => {
                    writeln!(self.out, "\n(interrupted)")?;
                    continue;
                }
                Input::TooLong => {
                    writeln!(
                        self.out,
                        "input too long (at most {} characters): type a number from 1 to 11",
                        input::INPUT_LINE_BYTES_MAX
                    )?;
                    continue;
                }
                Input::Line(l) => l,
            };
            let done = match choice.as_str() {
                "" => Ok(()),
                "1" => self.status(),
                "2" => self.pause(),
                "3" => self.resume(),
                "4" => self.rate(),
                "5" => self.failed(),
                "6" => self.network(),
                "7" => self.diagnostics(),
                "8" => self.reboot(),
                "10" => self.quarantine(),
                "11" => self.bans(),
                "9" | "q" | "exit" | "logout" => {
                    writeln!(self.out, "logged out")?;
                    return Ok(());
                }
                other => {
                    let shown: String = other.chars().take(COLUMNS_COUNT / 2).collect();
                    writeln!(
                        self.out,
                        "unknown choice {shown:?}: type a number from 1 to 11 (there is no shell here)"
                    )?;
                    Ok(())
                }
            };
            match done {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    writeln!(self.out, "\nend of input: logged out")?;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Asks a question; Ctrl-C, an over-long line or end of input end the entry.
    fn ask(&mut self, question: &str) -> std::io::Result<Answer> {
        write!(self.out, "{question}")?;
        self.out.flush()?;
        Ok(match self.reader.read_input()? {
            Input::Line(l) => Answer::Text(l),
            Input::Interrupted => {
                writeln!(self.out, "\n(interrupted)")?;
                Answer::Back
            }
            Input::TooLong => {
                writeln!(self.out, "input too long: back to the menu")?;
                Answer::Back
            }
            Input::Eof => Answer::Eof,
        })
    }

    fn request(&self, req: &Request) -> Result<Response, String> {
        let socket = self.setup.socket.clone();
        let req = req.clone();
        self.rt.block_on(async move {
            match tokio::time::timeout(
                Duration::from_secs(CONTROL_ANSWER_TIMEOUT_SECS),
                control::request(&socket, &req),
            )
            .await
            {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(control::ControlError::Connect(path, e))) => Err(format!(
                    "the daemon is not running (no answer on {}: {e})",
                    path.display()
                )),
                Ok(Err(e)) => Err(format!("the daemon did not answer properly: {e}")),
                Err(_) => Err(format!(
                    "the daemon did not answer within {CONTROL_ANSWER_TIMEOUT_SECS} s"
                )),
            }
        })
    }

    fn snapshot(&self) -> Result<Snapshot, String> {
        match self.request(&Request::Status)? {
            Response::Status(s) => Ok(*s),
            Response::Error { message } => Err(format!("the daemon refused: {message}")),
            other => Err(format!("unexpected answer from the daemon: {other:?}")),
        }
    }

    fn daemon_down(&mut self, why: &str) -> std::io::Result<()> {
        writeln!(self.out, "{why}")?;
        writeln!(
            self.out,
            "Network (6), diagnostics (7) and reboot (8) still work."
        )?;
        Ok(())
    }

    fn status(&mut self) -> std::io::Result<()> {
        match self.snapshot() {
            Ok(s) => {
                writeln!(self.out)?;
                write!(self.out, "{}", render_text(&s, false))?;
                Ok(())
            }
            Err(why) => self.daemon_down(&why),
        }
    }

    /// Shows the daemon's answer to a drain request.
    fn drain_request(&mut self, req: Request) -> std::io::Result<()> {
        match self.request(&req) {
            Ok(Response::Shaping(s)) => {
                writeln!(self.out, "{}", shaping_summary(&s, SystemTime::now()))?;
                Ok(())
            }
            Ok(Response::Error { message }) => {
                writeln!(self.out, "The daemon refused: {message}")?;
                Ok(())
            }
            Ok(other) => {
                writeln!(self.out, "unexpected answer from the daemon: {other:?}")?;
                Ok(())
            }
            Err(why) => self.daemon_down(&why),
        }
    }

    /// Asks for a duration; `Ok(None)` inside `Some` is "empty answer" when allowed.
    fn ask_duration(
        &mut self,
        question: &str,
        empty_allowed: bool,
    ) -> std::io::Result<Option<Option<u64>>> {
        let text = match self.ask(question)? {
            Answer::Text(t) => t,
            Answer::Back => return Ok(None),
            Answer::Eof => return Err(eof()),
        };
        if text.is_empty() && empty_allowed {
            return Ok(Some(None));
        }
        match humantime::parse_duration(&text) {
            Ok(d) if d.as_secs() > 0 => Ok(Some(Some(d.as_secs()))),
            _ => {
                writeln!(
                    self.out,
                    "not a duration: {:?} (examples: 30m, 2h, 1h30m); back to the menu",
                    text.chars().take(COLUMNS_COUNT / 2).collect::<String>()
                )?;
                Ok(None)
            }
        }
    }

    fn pause(&mut self) -> std::io::Result<()> {
        let Some(for_secs) = self.ask_duration(
            "Pause the drain for how long? (e.g. 30m, 2h; empty: until resumed) ",
            true,
        )?
        else {
            return Ok(());
        };
        self.drain_request(Request::DrainPause { for_secs })
    }

    fn resume(&mut self) -> std::io::Result<()> {
        self.drain_request(Request::DrainResume)
    }

    fn rate(&mut self) -> std::io::Result<()> {
        let text = match self.ask("Rate (e.g. 5MiB/s, 800KiB/s, or unlimited): ")? {
            Answer::Text(t) => t,
            Answer::Back => return Ok(()),
            Answer::Eof => return Err(eof()),
        };
        let bytes_per_sec = match parse_rate(&text) {
            Ok(r) => r,
            Err(e) => {
                writeln!(self.out, "{e}; back to the menu")?;
                return Ok(());
            }
        };
        let Some(Some(for_secs)) = self.ask_duration(
            "For how long? (e.g. 2h; the schedule applies after) ",
            false,
        )?
        else {
            return Ok(());
        };
        self.drain_request(Request::DrainRate {
            bytes_per_sec,
            for_secs: Some(for_secs),
        })
    }

    fn failed(&mut self) -> std::io::Result<()> {
        let snapshot = match self.snapshot() {
            Ok(s) => s,
            Err(why) => return self.daemon_down(&why),
        };
        let failed: Vec<_> = snapshot
            .files
            .iter()
            .filter(|f| matches!(f.state, FileState::Failed | FileState::Conflict))
            .take(FAILED_LISTED_COUNT_MAX)
            .collect();
        if failed.is_empty() {
            writeln!(self.out, "No failed files.")?;
            return Ok(());
        }
        writeln!(self.out, "Failed files (kept on the spool until retried):")?;
        for (i, f) in failed.iter().enumerate() {
            let line = format!(
                "{:>3}) {}:{}  {}",
                i + 1,
                f.user,
                f.path,
                human_bytes(f.size)
            );
            writeln!(self.out, "{}", clip(&line, COLUMNS_COUNT))?;
            if let Some(e) = &f.error {
                writeln!(self.out, "{}", clip(&format!("     {e}"), COLUMNS_COUNT))?;
            }
        }
        let answer = match self.ask("Retry which? (a number, a for all, empty: none) ")? {
            Answer::Text(t) => t,
            Answer::Back => return Ok(()),
            Answer::Eof => return Err(eof()),
        };
        let req = match answer.as_str() {
            "" => return Ok(()),
            "a" | "all" => Request::Retry {
                user: None,
                path: None,
            },
            n => match n
                .parse::<usize>()
                .ok()
                .and_then(|i| failed.get(i.wrapping_sub(1)))
            {
                Some(f) => Request::Retry {
                    user: Some(f.user.clone()),
                    path: Some(f.path.clone()),
                },
                None => {
                    writeln!(
                        self.out,
                        "no such file: type a number from 1 to {}",
                        failed.len()
                    )?;
                    return Ok(());
                }
            },
        };
        let answer = self.request(&req).map(retried_as_done);
        self.show_done(answer)
    }

    /// Sealed files the journal did not explain (after a damaged or lost journal): lists
    /// them and delivers or deletes one, as `sftpgw quarantine` does from a shell.
    fn quarantine(&mut self) -> std::io::Result<()> {
        let listed = self.list(&Request::QuarantineList, |r| match r {
            Response::Quarantine { files, count } => Ok((files, count)),
            other => Err(other),
        })?;
        let Some((files, count)) = listed else {
            return Ok(());
        };
        if files.is_empty() {
            writeln!(self.out, "The quarantine is empty.")?;
            return Ok(());
        }
        self.show_quarantine(&files, count)?;
        let Some((deliver, file)) = self.pick_quarantined(&files)? else {
            return Ok(());
        };
        let request = if deliver {
            self.deliver_request(file)?
        } else {
            self.delete_request(file)?
        };
        let Some(request) = request else {
            return Ok(());
        };
        let answer = self.request(&request);
        self.show_done(answer)
    }

    /// The quarantined files, numbered from 1, each with why it is there.
    fn show_quarantine(
        &mut self,
        files: &[crate::spool::QuarantinedFile],
        count: usize,
    ) -> std::io::Result<()> {
        writeln!(
            self.out,
            "Quarantined files (kept until delivered or deleted):"
        )?;
        for (i, f) in files.iter().enumerate() {
            let identity = f.identity.as_ref().map_or_else(
                || "no identity".to_owned(),
                |id| {
                    format!("{}:{}", id.user, id.path.display())
                        .escape_debug()
                        .to_string()
                },
            );
            let line = format!(
                "{:>3}) {}  {}  {identity}",
                i + 1,
                f.name,
                human_bytes(f.size)
            );
            writeln!(self.out, "{}", clip(&line, COLUMNS_COUNT))?;
            writeln!(
                self.out,
                "{}",
                clip(&format!("     {}", f.reason), COLUMNS_COUNT)
            )?;
        }
        if count > files.len() {
            writeln!(self.out, "... and {} more", count - files.len())?;
        }
        Ok(())
    }

    /// Asks which file to deliver (`d N`, `true`) or delete (`x N`, `false`); `None` when the
    /// answer is empty or not understood (with why printed).
    fn pick_quarantined<'f>(
        &mut self,
        files: &'f [crate::spool::QuarantinedFile],
    ) -> std::io::Result<Option<(bool, &'f crate::spool::QuarantinedFile)>> {
        let answer = match self.ask("Which? (d N: deliver, x N: delete, empty: none) ")? {
            Answer::Text(t) => t,
            Answer::Back => return Ok(None),
            Answer::Eof => return Err(eof()),
        };
        let mut words = answer.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (None, _, _) => Ok(None),
            (Some(action @ ("d" | "x")), Some(n), None) => match n
                .parse::<usize>()
                .ok()
                .and_then(|i| files.get(i.wrapping_sub(1)))
            {
                Some(f) => Ok(Some((action == "d", f))),
                None => {
                    writeln!(
                        self.out,
                        "no such file: type a number from 1 to {}",
                        files.len()
                    )?;
                    Ok(None)
                }
            },
            _ => {
                writeln!(self.out, "type d or x and a number, like: d 1")?;
                Ok(None)
            }
        }
    }

    /// Asks where to deliver `file`; `None` when the operator backs out or types no target.
    fn deliver_request(
        &mut self,
        file: &crate::spool::QuarantinedFile,
    ) -> std::io::Result<Option<Request>> {
        let question = if file.identity.is_some() {
            "Deliver as USER:/PATH (empty: where its identity says) "
        } else {
            "It carries no identity. Deliver as USER:/PATH "
        };
        let target = match self.ask(question)? {
            Answer::Text(t) => t,
            Answer::Back => return Ok(None),
            Answer::Eof => return Err(eof()),
        };
        let target = target.trim();
        let (user, path) = match target.split_once(':') {
            Some((user, path)) => (Some(user.to_owned()), Some(path.to_owned())),
            None if target.is_empty() && file.identity.is_some() => (None, None),
            None => {
                writeln!(
                    self.out,
                    "type USER:/PATH, like alice:/scans/page-1.pdf: nothing delivered"
                )?;
                return Ok(None);
            }
        };
        Ok(Some(Request::QuarantineDeliver {
            name: file.name.clone(),
            user,
            path,
        }))
    }

    /// Asks the operator to confirm deleting `file`; `None` unless they type yes.
    fn delete_request(
        &mut self,
        file: &crate::spool::QuarantinedFile,
    ) -> std::io::Result<Option<Request>> {
        let question = format!("Delete {} for good? Type yes to delete: ", file.name);
        match self.ask(&question)? {
            Answer::Text(t) if t.trim() == "yes" => {}
            Answer::Eof => return Err(eof()),
            _ => {
                writeln!(self.out, "nothing deleted")?;
                return Ok(None);
            }
        }
        Ok(Some(Request::QuarantineDelete {
            name: file.name.clone(),
        }))
    }

    /// Asks the daemon for a list; `None` (with the reason printed) when it refused, answered
    /// something else, or is down.
    fn list<T>(
        &mut self,
        request: &Request,
        expected: impl FnOnce(Response) -> Result<T, Response>,
    ) -> std::io::Result<Option<T>> {
        match self.request(request).map(expected) {
            Ok(Ok(list)) => return Ok(Some(list)),
            Ok(Err(Response::Error { message })) => {
                writeln!(self.out, "The daemon refused: {message}")?;
            }
            Ok(Err(other)) => {
                writeln!(self.out, "unexpected answer from the daemon: {other:?}")?;
            }
            Err(why) => self.daemon_down(&why)?,
        }
        Ok(None)
    }

    /// Prints the daemon's answer to a request that changes something.
    fn show_done(&mut self, answer: Result<Response, String>) -> std::io::Result<()> {
        match answer {
            Ok(Response::Done { message }) => writeln!(self.out, "{message}")?,
            Ok(Response::Error { message }) => writeln!(self.out, "The daemon refused: {message}")?,
            Ok(other) => writeln!(self.out, "unexpected answer from the daemon: {other:?}")?,
            Err(why) => return self.daemon_down(&why),
        }
        Ok(())
    }

    /// Sources the daemon refuses for a while after repeated failed logins, negotiations or
    /// grace timeouts: lists them and lifts one ban or all, as `sftpgw bans` does.
    fn bans(&mut self) -> std::io::Result<()> {
        let listed = self.list(&Request::BansList, |r| match r {
            Response::Bans { bans } => Ok(bans),
            other => Err(other),
        })?;
        let Some(bans) = listed else {
            return Ok(());
        };
        if bans.is_empty() {
            writeln!(self.out, "No source on the LAN is banned.")?;
            return Ok(());
        }
        writeln!(self.out, "Banned sources (longest remaining first):")?;
        for (i, b) in bans.iter().enumerate() {
            let line = format!(
                "{:>3}) {}  {} left  ({} ban(s) within a day)",
                i + 1,
                b.source,
                human_duration(b.remaining_secs),
                b.count
            );
            writeln!(self.out, "{}", clip(&line, COLUMNS_COUNT))?;
        }
        let answer = match self.ask("Lift which? (a number, a for all, empty: none) ")? {
            Answer::Text(t) => t,
            Answer::Back => return Ok(()),
            Answer::Eof => return Err(eof()),
        };
        let source = match answer.trim() {
            "" => return Ok(()),
            "a" | "all" => None,
            n => match n
                .parse::<usize>()
                .ok()
                .and_then(|i| bans.get(i.wrapping_sub(1)))
            {
                // An IPv6 /64 is lifted through any address in it: its first one.
                Some(b) => Some(b.source.split('/').next().unwrap_or_default().to_owned()),
                None => {
                    writeln!(
                        self.out,
                        "no such ban: type a number from 1 to {}",
                        bans.len()
                    )?;
                    return Ok(());
                }
            },
        };
        let answer = self.request(&Request::BansClear { source });
        self.show_done(answer)
    }

    fn network_report(&self) -> String {
        let endpoint = self.setup.endpoint();
        self.rt.block_on(network::report(endpoint.as_deref()))
    }

    fn network(&mut self) -> std::io::Result<()> {
        writeln!(self.out, "Checking the network (a few seconds at most)...")?;
        self.out.flush()?;
        let report = self.network_report();
        write!(self.out, "{report}")?;
        Ok(())
    }

    fn diagnostics(&mut self) -> std::io::Result<()> {
        writeln!(self.out, "Writing a diagnostics bundle (up to a minute)...")?;
        self.out.flush()?;
        let status = match self.snapshot() {
            Ok(s) => serde_json::to_string_pretty(&s).map_err(|e| e.to_string()),
            Err(why) => Err(format!("no status: {why}")),
        };
        let contents = diagnostics::BundleContents {
            config_path: self.opts.config_path.clone(),
            status,
            network_report: self.network_report(),
        };
        let (dir, usb) = diagnostics::target_dir(&self.setup.diagnostics_dir);
        let host = hostname();
        match self
            .rt
            .block_on(diagnostics::write_bundle(&dir, &host, &contents, !usb))
        {
            Ok(path) => {
                let size = std::fs::metadata(&path).map_or(0, |m| m.len());
                writeln!(
                    self.out,
                    "Diagnostics written to {} ({})",
                    path.display(),
                    human_bytes(size)
                )?;
                if usb {
                    writeln!(self.out, "It is on the USB stick: you may remove it now.")?;
                }
            }
            Err(e) => writeln!(self.out, "No diagnostics written: {e}")?,
        }
        Ok(())
    }

    fn reboot(&mut self) -> std::io::Result<()> {
        let answer = match self
            .ask("Reboot the box now? Uploads in progress resume afterwards. Type yes: ")?
        {
            Answer::Text(t) => t,
            Answer::Back => return Ok(()),
            Answer::Eof => return Err(eof()),
        };
        if answer != "yes" {
            writeln!(self.out, "not rebooting")?;
            return Ok(());
        }
        if let Err(e) = request_reboot(&self.opts.reboot_request) {
            writeln!(
                self.out,
                "cannot request the reboot ({}: {e}); is the reboot watcher installed?",
                self.opts.reboot_request.display()
            )?;
            return Ok(());
        }
        writeln!(
            self.out,
            "Reboot requested: the box goes down in a few seconds."
        )?;
        self.out.flush()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(REBOOT_WAIT_SECS);
        while std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            if input::take_interrupt() {
                writeln!(self.out, "\n(interrupted; the reboot request stands)")?;
                return Ok(());
            }
        }
        writeln!(
            self.out,
            "The box did not reboot within {REBOOT_WAIT_SECS} s: the watcher of {} is not running.",
            self.opts.reboot_request.display()
        )?;
        let _ = std::fs::remove_file(&self.opts.reboot_request);
        Ok(())
    }
}

/// End of input inside a menu entry: unwinds to `session`, which logs out.
fn eof() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "end of input")
}

/// Asks the root-owned watcher to reboot: creates the request file.
pub fn request_reboot(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?
        .write_all(
            format!(
                "requested by the serial console, pid {}\n",
                std::process::id()
            )
            .as_bytes(),
        )
}

fn clip(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        line.to_owned()
    } else {
        let mut s: String = line.chars().take(width - 3).collect();
        s.push_str("...");
        s
    }
}

/// `5MiB/s`, `800 KiB/s`, `1000000` (bytes per second), `unlimited`.
pub fn parse_rate(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let amount = t.strip_suffix("/s").unwrap_or(t).trim();
    match amount.parse::<bytesize::ByteSize>() {
        Ok(b) if b.as_u64() > 0 => Ok(Some(b.as_u64())),
        _ => Err(format!(
            "not a rate: {:?} (examples: 5MiB/s, 800KiB/s, unlimited)",
            t.chars().take(COLUMNS_COUNT / 2).collect::<String>()
        )),
    }
}

/// One or two lines on what the shaper does now, for the console.
pub fn shaping_summary(s: &ShapingStatus, now: SystemTime) -> String {
    let state = if s.paused {
        "Drain PAUSED".to_owned()
    } else {
        match s.limit_bytes_per_sec {
            Some(r) => format!("Drain limited to {}/s", human_bytes(r)),
            None => "Drain unlimited".to_owned(),
        }
    };
    let mut out = state;
    if !s.reason.is_empty() {
        out.push_str(&format!(" ({})", s.reason));
    }
    if s.override_active {
        let now_unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match s.override_until_unix {
            Some(until) => out.push_str(&format!(
                "\nuntil {} (in {})",
                humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(until)
                ),
                humantime::format_duration(Duration::from_secs(until.saturating_sub(now_unix)))
            )),
            None => out.push_str("\nuntil resumed (menu entry 3)"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units_and_unlimited() {
        assert_eq!(parse_rate("5MiB/s"), Ok(Some(5 << 20)));
        assert_eq!(parse_rate(" 800 KiB/s "), Ok(Some(800 << 10)));
        assert_eq!(parse_rate("unlimited"), Ok(None));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn shaping_summary_says_paused_and_until_when() {
        let s = ShapingStatus {
            paused: true,
            reason: "override".into(),
            override_active: true,
            override_until_unix: Some(7200),
            ..Default::default()
        };
        let text = shaping_summary(&s, SystemTime::UNIX_EPOCH + Duration::from_secs(3600));
        assert!(text.starts_with("Drain PAUSED (override)"), "{text}");
        assert!(text.contains("(in 1h)"), "{text}");
    }
}
