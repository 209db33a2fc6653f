//! Servers whose handles are never dropped (the test process was killed, aborted, or kept the
//! handle in a `static`) are still cleaned up: a watchdog notices the process is gone.
//!
//! The test runs this same test binary again as a child that starts both servers, writes
//! where they are to a file, and exits without dropping anything; then it waits for the
//! servers to go.

use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use encore_testkit::{Postgres, Tansu};

const LEAK_ENV: &str = "ENCORE_TESTKIT_LEAK_AND_EXIT";

/// Only does something in the child started by the test below.
#[test]
fn leak_servers_and_exit() {
    let Some(report) = std::env::var_os(LEAK_ENV) else {
        return;
    };
    let postgres = Postgres::start().expect("postgres starts");
    let tansu = Tansu::start().expect("tansu starts");
    let tansu_dir = tansu.log_path().parent().expect("log directory").to_owned();
    let lines = format!("{} {}\n{} {}\n", postgres.port(), postgres.data_dir().display(), tansu.port(), tansu_dir.display());
    std::fs::write(report, lines).expect("report written");
    // Exit without running any destructor.
    std::process::exit(0);
}

fn port_open(port: u16) -> bool {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
}

#[test]
fn servers_of_a_dead_test_process_are_stopped_and_removed() {
    let report = tempfile::NamedTempFile::new().expect("report file");
    let output = Command::new(std::env::current_exe().expect("test binary path"))
        .args(["--exact", "leak_servers_and_exit", "--test-threads=1"])
        .env(LEAK_ENV, report.path())
        .output()
        .expect("the child test runs");
    assert!(output.status.success(), "{output:?}");
    let text = std::fs::read_to_string(report.path()).expect("report readable");
    let leaked: Vec<(u16, PathBuf)> = text
        .lines()
        .filter_map(|line| {
            let (port, dir) = line.split_once(' ')?;
            Some((port.parse().expect("a port"), PathBuf::from(dir)))
        })
        .collect();
    assert_eq!(leaked.len(), 2, "report: {text}");
    for (port, dir) in &leaked {
        assert!(dir.exists(), "{} exists right after the child exits", dir.display());
        assert!(port_open(*port), "port {port} still served right after the child exits");
    }

    // The watchdogs poll once a second; the bound is generous for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    while leaked.iter().any(|(port, dir)| port_open(*port) || dir.exists()) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    for (port, dir) in &leaked {
        assert!(!port_open(*port), "port {port} is closed");
        assert!(!dir.exists(), "{} is removed", dir.display());
    }
}
