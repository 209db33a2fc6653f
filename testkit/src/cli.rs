//! Running the workspace's binaries in tests and asserting on how they exit: the promises of
//! SPEC §4 (exit 0 on success; otherwise non-zero with a one-line reason on stderr).

use std::ffi::OsStr;
use std::process::{Command, Output};

/// The catalog flags of the generator's CLI tests: a catalog small enough to build in
/// milliseconds and large enough for every code path (`encore-gen stream` and `catalog`).
pub const SMALL_CATALOG: [&str; 8] = ["--users", "5000", "--artists", "500", "--tracks", "5000", "--albums", "600"];

/// Runs `program` (e.g. `env!("CARGO_BIN_EXE_encore-gen")`) with `args` to its end and returns
/// its status and output; panics only if it cannot be started.
pub fn run_bin(program: impl AsRef<OsStr>, args: &[&str]) -> Output {
    let program = program.as_ref();
    Command::new(program).args(args).output().unwrap_or_else(|err| panic!("{} does not start: {err}", program.to_string_lossy()))
}

/// Asserts that a run succeeded, showing its output when it did not.
pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "the program failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Asserts that a run of `program` failed the way users are promised: a non-zero status and
/// one `PROGRAM: …` line naming `expected`, last on stderr (warnings logged while retrying may
/// come before it), without a cause repeated in it.
pub fn assert_one_line_error(program: &str, output: &Output, expected: &str) {
    assert!(!output.status.success(), "should fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let prefix = format!("{program}: ");
    let reasons: Vec<&str> = stderr.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(reasons.len(), 1, "one reason line on stderr, got: {stderr}");
    assert_eq!(stderr.lines().last(), Some(reasons[0]), "the reason comes last");
    assert!(reasons[0].contains(expected), "{expected:?} in {:?}", reasons[0]);
    // `{:#}` appends every source to the message; one that the message already says would
    // appear twice.
    let parts: Vec<&str> = reasons[0].split(": ").collect();
    for (index, part) in parts.iter().enumerate() {
        assert!(part.len() < 12 || !parts[index + 1..].contains(part), "a cause repeated in {:?}", reasons[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Output {
        run_bin("sh", &["-c", script])
    }

    #[test]
    fn one_reason_line_last_passes() {
        assert_success(&sh("true"));
        assert_one_line_error("prog", &sh("echo 'a warning' >&2; echo 'prog: no broker' >&2; exit 2"), "no broker");
    }

    #[test]
    #[should_panic(expected = "the reason comes last")]
    fn a_reason_before_other_lines_fails() {
        assert_one_line_error("prog", &sh("echo 'prog: no broker' >&2; echo more >&2; exit 2"), "no broker");
    }

    #[test]
    #[should_panic(expected = "a cause repeated")]
    fn a_repeated_cause_fails() {
        assert_one_line_error("prog", &sh("echo 'prog: connection refused: connection refused' >&2; exit 1"), "refused");
    }
}
