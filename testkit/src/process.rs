//! Finding server binaries and running commands, as the `postgres` user when we are root.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::{Error, Result};

/// The first existing file named `name` in the directories of `PATH`, then in `extra_dirs`.
pub(crate) fn find_binary(name: &str, extra_dirs: &[PathBuf]) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>()).unwrap_or_default();
    path_dirs.iter().chain(extra_dirs).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// Whether this process runs with effective user id 0.
///
/// `/proc/self` is owned by the process's effective uid, which avoids `unsafe` libc calls.
pub(crate) fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// A command for `program` that runs as `user` through `runuser` when one is given.
pub(crate) fn command_as(user: Option<&str>, program: &Path) -> Command {
    match user {
        Some(user) => {
            let mut command = Command::new("runuser");
            command.args(["-u", user, "--"]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// `command` rendered for error messages.
pub(crate) fn describe(command: &Command) -> String {
    std::iter::once(command.get_program()).chain(command.get_args()).map(OsStr::to_string_lossy).collect::<Vec<_>>().join(" ")
}

/// Runs `command` to completion; a non-zero exit becomes [`Error::CommandFailed`] carrying the
/// end of its output.
pub(crate) fn run(command: &mut Command) -> Result<Output> {
    let output = command.output().map_err(|source| Error::Spawn { command: describe(command), source })?;
    if output.status.success() {
        Ok(output)
    } else {
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        Err(Error::CommandFailed { command: describe(command), status: output.status, output: last_lines(&text, 20) })
    }
}

/// A `sh` process that cleans up after a server if this (test) process dies without dropping
/// its handle: killed by the test runner, aborted, or the handle kept in a `static`, which is
/// never dropped. It polls once a second whether this process is alive; once it is not, it
/// runs the cleanup command and removes the server's directory. Dropping the watchdog (the
/// normal path, where the handle cleans up itself) kills it.
#[derive(Debug)]
pub(crate) struct Watchdog(Child);

impl Watchdog {
    /// Watches this process; after its death runs `cleanup` (program and arguments), then
    /// deletes `dir`.
    pub(crate) fn spawn(dir: &Path, cleanup: &[&OsStr]) -> Result<Watchdog> {
        // `$0` is the watched pid and `$1` the directory; the rest is the cleanup command, so
        // nothing is interpolated into the script.
        const SCRIPT: &str = r#"while kill -0 "$0" 2>/dev/null; do sleep 1; done
dir="$1"; shift; "$@" >/dev/null 2>&1; rm -rf "$dir""#;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(SCRIPT)
            .arg(std::process::id().to_string())
            .arg(dir)
            .args(cleanup)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command.spawn().map(Watchdog).map_err(|source| Error::Spawn { command: describe(&command), source })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Errors mean it already exited; either way there is nothing left to do.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The last `count` lines of the file at `path`, or a note saying why it could not be read.
pub(crate) fn log_tail(path: &Path, count: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => last_lines(&String::from_utf8_lossy(&bytes), count),
        Err(error) => format!("(log unreadable: {error})"),
    }
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }

    #[test]
    fn runuser_wraps_the_program_only_for_another_user() {
        let plain = command_as(None, Path::new("/bin/true"));
        assert_eq!(describe(&plain), "/bin/true");
        let wrapped = command_as(Some("postgres"), Path::new("/bin/true"));
        assert_eq!(describe(&wrapped), "runuser -u postgres -- /bin/true");
    }

    #[test]
    fn a_failing_command_reports_its_output() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo boom >&2; exit 3"]);
        match run(&mut command) {
            Err(Error::CommandFailed { output, .. }) => assert_eq!(output, "boom"),
            other => panic!("expected CommandFailed, got {other:?}"),
        }
    }
}
