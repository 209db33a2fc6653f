//! The process tree from `/proc`: what a script under test started, and whether it is gone.
//!
//! Tests that kill a launcher outright (SIGKILL) check that everything it started ends too.
//! Its children are then reparented, so they are found beforehand, by parent pid, and later
//! recognised by pid *and* start time: a pid reused by an unrelated process does not count.
//! [`wait_all`] waits for processes that depend on each other, ending all when one fails.

use std::io::Read;
use std::process::{Child, Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A stand-in for encore-flow and encore-gen in tests of the scripts that start them (write
/// it to a file named after the program and make it executable): `catalog` is done at once;
/// anything else runs until a signal and prints which one ended it, `stand-in ended by
/// SIGTERM` (the real programs stop cleanly on SIGINT, SIGTERM and SIGHUP alike).
pub const STAND_IN: &str = r#"#!/usr/bin/env bash
[[ "${1:-}" == catalog ]] && exit 0
for signal in INT TERM HUP; do
    trap "echo 'stand-in ended by SIG$signal'; exit 0" "$signal"
done
while :; do sleep 0.1; done
"#;

/// One process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// Its parent's pid when it was read.
    pub parent: u32,
    /// Clock ticks after boot at which it started.
    started: u64,
    /// Exited, waiting for its parent (or init) to reap it.
    zombie: bool,
}

impl Process {
    /// The process `pid`, if it exists.
    pub fn read(pid: u32) -> Option<Process> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name, in parentheses, may hold spaces and parentheses: the fields
        // follow its last ')'. After it: state, ppid, … starttime (the 20th).
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(Process {
            pid,
            parent: fields.get(1)?.parse().ok()?,
            started: fields.get(19)?.parse().ok()?,
            zombie: fields.first() == Some(&"Z"),
        })
    }

    /// Still running: the same process (pid and start time), and not a zombie, which has
    /// exited and merely awaits its reaper.
    pub fn running(&self) -> bool {
        Process::read(self.pid).is_some_and(|now| now.started == self.started && !now.zombie)
    }

    /// Its command line, arguments separated by spaces (empty once it is gone).
    pub fn command_line(&self) -> String {
        std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " ").trim_end().to_owned())
            .unwrap_or_default()
    }
}

/// Every live descendant of `root`: its children, theirs, and so on.
pub fn descendants(root: u32) -> Vec<Process> {
    let all: Vec<Process> = std::fs::read_dir("/proc")
        .map(|entries| entries.flatten().filter_map(|entry| entry.file_name().to_str()?.parse().ok()).filter_map(Process::read).collect())
        .unwrap_or_default();
    let mut found = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for child in all.iter().filter(|p| p.parent == parent && !p.zombie) {
            found.push(*child);
            parents.push(child.pid);
        }
    }
    found
}

/// Waits until none of `processes` is running, polling. After `patience` the ones left are
/// killed (SIGKILL, so that a failing test leaves nothing behind) and returned as
/// `pid command-line` strings.
pub fn wait_until_gone(processes: &[Process], patience: Duration) -> Result<(), Vec<String>> {
    let deadline = Instant::now() + patience;
    loop {
        let left: Vec<&Process> = processes.iter().filter(|p| p.running()).collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let described = left.iter().map(|p| format!("{} {}", p.pid, p.command_line())).collect();
            for process in left {
                let _ = Command::new("kill").args(["-KILL", &process.pid.to_string()]).status();
            }
            return Err(described);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The outputs of processes that work together (a timely cluster's processes), once all have
/// ended. A process that fails ends the others at once (each would wait for its peer without
/// end), and so does `patience` running out (a guard against a hang); the run is then an
/// error: the stderr of the first one that failed, or a note of the timeout. Their stdout and
/// stderr, where piped, are read as they come, so a full pipe blocks none of them.
pub fn wait_all(children: Vec<Child>, patience: Duration) -> Result<Vec<Output>, String> {
    let deadline = Instant::now() + patience;
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    /// A child and the readers of its stdout and stderr.
    type Running = (Child, JoinHandle<Vec<u8>>, JoinHandle<Vec<u8>>);
    let mut running: Vec<Running> = children
        .into_iter()
        .map(|mut child| {
            let stdout = read(child.stdout.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>));
            let stderr = read(child.stderr.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>));
            (child, stdout, stderr)
        })
        .collect();
    let mut failed = None;
    loop {
        let mut all_ended = true;
        for (index, (child, _, _)) in running.iter_mut().enumerate() {
            match child.try_wait() {
                Ok(Some(status)) if !status.success() => failed = failed.or(Some(index)),
                Ok(Some(_)) => {}
                _ => all_ended = false,
            }
        }
        let timed_out = Instant::now() > deadline;
        if all_ended || failed.is_some() || timed_out {
            let outputs: Vec<Output> = running
                .into_iter()
                .map(|(mut child, stdout, stderr)| {
                    let _ = child.kill();
                    let status = child.wait().expect("a started process can be waited for");
                    Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
                })
                .collect();
            return match failed {
                Some(index) => Err(String::from_utf8_lossy(&outputs[index].stderr).into_owned()),
                None if all_ended => Ok(outputs),
                None => Err(format!(
                    "not ended after {patience:?}; their stderr: {:?}",
                    outputs.iter().map(|o| String::from_utf8_lossy(&o.stderr)).collect::<Vec<_>>()
                )),
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child that gets SIGTERM, and is waited for, when dropped before [`TermOnDrop::take`]:
/// a test that fails before it stops the script it started leaves nothing running (the
/// deploy scripts stop their own children in order on SIGTERM).
#[derive(Debug)]
pub struct TermOnDrop(Option<Child>);

impl TermOnDrop {
    /// Guards `child`.
    pub fn new(child: Child) -> TermOnDrop {
        TermOnDrop(Some(child))
    }

    /// The child.
    pub fn get(&mut self) -> &mut Child {
        self.0.as_mut().expect("taken only by take(), which consumes the guard")
    }

    /// The child, no longer guarded.
    pub fn take(mut self) -> Child {
        self.0.take().expect("taken only once")
    }
}

impl Drop for TermOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_grandchildren_and_sees_them_go() {
        // sh → sleep (a grandchild of this test through sh).
        let mut shell = std::process::Command::new("sh").args(["-c", "sleep 30 & wait"]).spawn().expect("sh");
        let deadline = Instant::now() + Duration::from_secs(30);
        let found = loop {
            let found = descendants(shell.id());
            if found.iter().any(|p| p.command_line() == "sleep 30") {
                break found;
            }
            assert!(Instant::now() < deadline, "sleep started under sh: {found:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let sleep = *found.iter().find(|p| p.command_line() == "sleep 30").expect("sleep");
        assert_eq!(sleep.parent, shell.id());
        assert!(sleep.running());
        // Killing sh leaves sleep running (nothing takes it along): waiting fails, kills it.
        shell.kill().expect("kill sh");
        shell.wait().expect("reap sh");
        let left = wait_until_gone(&[sleep], Duration::from_millis(300)).expect_err("sleep outlives sh");
        assert_eq!(left, [format!("{} sleep 30", sleep.pid)]);
        wait_until_gone(&[sleep], Duration::from_secs(30)).expect("killed by the failed wait");
        assert!(Process::read(std::process::id()).is_some_and(|me| me.running()));
    }

    fn sh(script: &str) -> Child {
        use std::process::Stdio;
        Command::new("sh").args(["-c", script]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("sh")
    }

    #[test]
    fn waiting_for_all_ends_the_others_when_one_fails() {
        let outputs = wait_all(vec![sh("echo one"), sh("sleep 0.2; echo two")], Duration::from_secs(60)).expect("both succeed");
        let stdout: Vec<String> = outputs.iter().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).collect();
        assert_eq!(stdout, ["one\n", "two\n"]);

        // The sleeper would wait for its failed peer without end: it is killed at once.
        let sleeper = sh("exec sleep 600");
        let pid = sleeper.id();
        let failed = wait_all(vec![sleeper, sh("echo 'no port' >&2; exit 3")], Duration::from_secs(60)).expect_err("one fails");
        assert_eq!(failed, "no port\n");
        assert!(Process::read(pid).is_none_or(|sleep| !sleep.running()), "the other process was ended");

        let timed_out = wait_all(vec![sh("exec sleep 600")], Duration::from_millis(200)).expect_err("a hang");
        assert!(timed_out.starts_with("not ended after"), "{timed_out}");
    }
}
