//! Line input of the serial console: bounded lines from a file descriptor (the terminal),
//! interruptible by Ctrl-C without the process dying.
//!
//! Why not `BufRead::read_line`: it retries on `EINTR`, keeps unbounded lines in memory, and a
//! buffered reader would hide already-read input from `poll`. Here stdin is polled in short
//! slices; SIGINT only sets a flag ([`install_signal_handlers`]) that the reader turns into
//! [`Input::Interrupted`], so Ctrl-C brings the menu back wherever the operator is.
//!
//! A leaf: terminal reads and signal flags only. It knows nothing of menus, the configuration or
//! the daemon.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// Longest answer accepted at a prompt; longer lines are discarded whole.
pub const INPUT_LINE_BYTES_MAX: usize = 256;
/// How often the reader looks at the Ctrl-C flag while waiting for input.
const POLL_SLICE_MILLIS: u16 = 200;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C sets a flag (the menu comes back); Ctrl-\ and Ctrl-Z are ignored, so neither kills
/// nor stops the console. SIGHUP (the line hangs up) keeps its default: the session ends.
pub fn install_signal_handlers() -> nix::Result<()> {
    let catch = SigAction::new(
        SigHandler::Handler(on_sigint),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only stores to an atomic (async-signal-safe); SIG_IGN needs nothing.
    unsafe {
        sigaction(Signal::SIGINT, &catch)?;
        sigaction(Signal::SIGQUIT, &ignore)?;
        sigaction(Signal::SIGTSTP, &ignore)?;
    }
    Ok(())
}

/// The console's own process group in the terminal's foreground, for as long as it lives.
///
/// Why: `login` (busybox's with LOGIN_SESSION_AS_CHILD, util-linux's always) forks the login
/// shell and waits for it in the same process group, so Ctrl-C's SIGINT also reaches `login`,
/// which dies of it; init then starts a new getty on the line, which takes the terminal away
/// and the console ends without a word. Like a shell running a job, the console moves into a
/// process group of its own and makes it the terminal's foreground group: the terminal's
/// signals then reach the console only. Dropping the guard gives the foreground back.
pub struct Foreground<'fd> {
    fd: BorrowedFd<'fd>,
    previous: nix::unistd::Pid,
}

impl<'fd> Foreground<'fd> {
    /// `None` if `fd` is not our controlling terminal (a pipe in tests, a non-login run).
    pub fn take(fd: BorrowedFd<'fd>) -> Option<Foreground<'fd>> {
        use nix::unistd::{Pid, getpgrp, getpid, setpgid, tcgetpgrp, tcsetpgrp};
        let previous = tcgetpgrp(fd).ok()?;
        // tcsetpgrp from what becomes a background group raises SIGTTOU, which would stop us.
        let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
        // SAFETY: SIG_IGN needs nothing.
        unsafe { sigaction(Signal::SIGTTOU, &ignore) }.ok()?;
        // A session leader (no forking login) already leads its group: EPERM, nothing to do.
        if getpgrp() != getpid() {
            setpgid(Pid::from_raw(0), Pid::from_raw(0)).ok()?;
        }
        tcsetpgrp(fd, getpgrp()).ok()?;
        Some(Foreground { fd, previous })
    }
}

impl Drop for Foreground<'_> {
    fn drop(&mut self) {
        let _ = nix::unistd::tcsetpgrp(self.fd, self.previous);
    }
}

/// Whether Ctrl-C was pressed since the last call (and clears it).
pub fn take_interrupt() -> bool {
    INTERRUPTED.swap(false, Ordering::SeqCst)
}

/// One answer typed at a prompt.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// A line without its terminator, trimmed.
    Line(String),
    /// A line longer than [`INPUT_LINE_BYTES_MAX`] (discarded).
    TooLong,
    /// Ctrl-C.
    Interrupted,
    /// End of input (Ctrl-D on an empty line, the pipe closed, the line hung up).
    Eof,
}

/// Reads lines from a file descriptor, one `read` at a time, keeping what follows a line for
/// the next call.
pub struct LineReader<'fd> {
    fd: BorrowedFd<'fd>,
    pending: Vec<u8>,
    /// The current line is over-long: skip to its end.
    discarding: bool,
    eof: bool,
}

impl<'fd> LineReader<'fd> {
    /// A reader of `fd` with nothing read yet.
    pub fn new(fd: BorrowedFd<'fd>) -> Self {
        LineReader {
            fd,
            pending: Vec::new(),
            discarding: false,
            eof: false,
        }
    }

    /// The next answer. A CR, LF or CRLF ends a line (serial terminals send CR).
    pub fn read_input(&mut self) -> std::io::Result<Input> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n' || b == b'\r') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if self.pending.first() == Some(&b'\n') && line.last() == Some(&b'\r') {
                    self.pending.remove(0);
                }
                if std::mem::take(&mut self.discarding) {
                    return Ok(Input::TooLong);
                }
                let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                return Ok(Input::Line(text.trim().to_owned()));
            }
            if self.pending.len() > INPUT_LINE_BYTES_MAX {
                self.pending.clear();
                self.discarding = true;
            }
            if self.eof {
                // A last line without a terminator still counts, unless it was too long.
                if self.pending.is_empty() || self.discarding {
                    self.pending.clear();
                    return Ok(Input::Eof);
                }
                let text = String::from_utf8_lossy(&std::mem::take(&mut self.pending))
                    .trim()
                    .to_owned();
                return Ok(Input::Line(text));
            }
            if take_interrupt() {
                self.pending.clear();
                self.discarding = false;
                return Ok(Input::Interrupted);
            }
            self.fill()?;
        }
    }

    /// Waits up to one poll slice for input and appends what one `read` returns.
    fn fill(&mut self) -> std::io::Result<()> {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(POLL_SLICE_MILLIS)) {
            Ok(0) | Err(Errno::EINTR) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let mut buf = [0u8; INPUT_LINE_BYTES_MAX];
        match nix::unistd::read(self.fd, &mut buf) {
            Ok(0) => self.eof = true,
            Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            // EIO: the terminal went away (hang-up); treat as the end of the session.
            Err(Errno::EIO) => self.eof = true,
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    fn reader_over(bytes: &[u8]) -> (std::fs::File, Vec<Input>) {
        let (read, write) = std::io::pipe().expect("pipe");
        let mut write = std::fs::File::from(std::os::fd::OwnedFd::from(write));
        write.write_all(bytes).expect("write");
        drop(write);
        let read = std::fs::File::from(std::os::fd::OwnedFd::from(read));
        let mut inputs = Vec::new();
        {
            let mut r = LineReader::new(read.as_fd());
            loop {
                let i = r.read_input().expect("next");
                let done = i == Input::Eof;
                inputs.push(i);
                if done {
                    break;
                }
            }
        }
        (read, inputs)
    }

    #[test]
    fn lines_end_at_cr_lf_or_crlf_and_over_long_lines_are_refused_whole() {
        let long = "x".repeat(INPUT_LINE_BYTES_MAX * 3);
        let (_, inputs) = reader_over(format!(" 1 \r\n2\r3\n{long}\n4").as_bytes());
        assert_eq!(
            inputs,
            vec![
                Input::Line("1".into()),
                Input::Line("2".into()),
                Input::Line("3".into()),
                Input::TooLong,
                Input::Line("4".into()),
                Input::Eof
            ]
        );
    }
}
