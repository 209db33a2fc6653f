//! Free loopback ports, and retrying a start whose port was taken meanwhile.
//!
//! A program that can bind port 0 and say what it bound (`encore-flow --metrics-addr 0`, which
//! logs `serving metrics at http://ADDR/metrics`) has no race: tests pass 0 and read the
//! address back. A port that must be known before the program starts (a timely hostfile, which
//! every process reads; `--metrics-port`, from which the launcher derives one port per
//! process; Tansu's and Postgres's command lines) can only be found free and then bound by the
//! program, and another process may take it in between: outgoing connections draw their local
//! ports from the same range as port 0. Such starts are retried on fresh ports
//! ([`retry_on_taken_port`], and inside `Tansu::start` and `Postgres::start`).

use std::fmt::Display;
use std::net::TcpListener;

use crate::{Error, Result};

/// How many times a start on fresh ports is tried before its failure is taken for real.
pub const PORT_ATTEMPTS: usize = 3;

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The kernel picks it (bind to port 0); the listener is closed before returning so the server
/// can bind it. Another process may grab it in between, which is why callers retry a failed
/// start on a new port ([`retry_on_taken_port`]). Where the program can bind port 0 itself,
/// pass 0 instead.
pub fn free_port() -> Result<u16> {
    free_port_on("127.0.0.1")
}

/// A TCP port on `host` (an address of this machine, e.g. `127.0.0.2`) that was free a moment
/// ago; see [`free_port`].
pub fn free_port_on(host: &str) -> Result<u16> {
    let io_error = |source| Error::Io { action: "binding a free port on", path: format!("{host}:0").into(), source };
    let listener = TcpListener::bind((host, 0)).map_err(io_error)?;
    Ok(listener.local_addr().map_err(io_error)?.port())
}

/// The first of `count` consecutive TCP ports on `host` that were all free a moment ago (for
/// `launch.sh --metrics-port P`, which gives process p the port P + p); see [`free_port`].
pub fn free_ports_on(host: &str, count: u16) -> Result<u16> {
    let mut last_error = None;
    // A port from the kernel, then its successors: each try holds them all at once.
    for _ in 0..20 {
        let first = free_port_on(host)?;
        if first.checked_add(count).is_none() {
            continue;
        }
        let held: std::io::Result<Vec<TcpListener>> = (first..first + count).map(|port| TcpListener::bind((host, port))).collect();
        match held {
            Ok(_) => return Ok(first),
            Err(error) => last_error = Some(error),
        }
    }
    let source = last_error.unwrap_or_else(|| std::io::Error::other("no run of free ports below 65536"));
    Err(Error::Io { action: "binding consecutive free ports on", path: format!("{host}:0").into(), source })
}

/// Whether a program's output (its stderr, or an error's text) says that an address it was to
/// bind was in use: the port was taken between [`free_port`] and the bind.
pub fn address_was_taken(output: &str) -> bool {
    output.contains("Address already in use") || output.contains("os error 98")
}

/// Runs `attempt(n)` for n = 1, 2, ... until it succeeds or fails otherwise than by a port
/// taken meanwhile ([`address_was_taken`] on the error's text), at most [`PORT_ATTEMPTS`]
/// times; each attempt must pick fresh ports. Returns the first success or the last error.
pub fn retry_on_taken_port<T, E: Display>(mut attempt: impl FnMut(usize) -> std::result::Result<T, E>) -> std::result::Result<T, E> {
    let mut number = 1;
    loop {
        match attempt(number) {
            Err(error) if number < PORT_ATTEMPTS && address_was_taken(&error.to_string()) => {
                eprintln!("encore-testkit: attempt {number} found a port taken, retrying on fresh ports");
                number += 1;
            }
            outcome => return outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_free_port_can_be_bound_again() {
        // Another program (or a parallel test's outgoing connection) may take a port between
        // its release and our bind, as the function's docs say; what must hold is that the
        // listener is released, so one of a few fresh ports binds.
        let mut errors = Vec::new();
        for _ in 0..5 {
            let port = free_port().expect("a free port");
            assert_ne!(port, 0);
            match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                Ok(_) => return,
                Err(error) => errors.push(format!("{port}: {error}")),
            }
        }
        panic!("no port was free after release: {errors:?}");
    }

    #[test]
    fn consecutive_free_ports_are_released_together() {
        let mut errors = Vec::new();
        for _ in 0..5 {
            let first = free_ports_on("127.0.0.1", 2).expect("two free ports");
            match (TcpListener::bind(("127.0.0.1", first)), TcpListener::bind(("127.0.0.1", first + 1))) {
                (Ok(_), Ok(_)) => return,
                (a, b) => errors.push(format!("{first}: {:?} {:?}", a.err(), b.err())),
            }
        }
        panic!("no pair was free after release: {errors:?}");
    }

    #[test]
    fn only_a_taken_address_is_retried_and_only_a_few_times() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let error = TcpListener::bind(taken.local_addr().expect("address")).expect_err("the port is taken").to_string();
        assert!(address_was_taken(&error), "{error}");

        let mut calls = 0;
        let outcome: std::result::Result<(), String> = retry_on_taken_port(|_| {
            calls += 1;
            Err(error.clone())
        });
        assert_eq!((calls, outcome), (PORT_ATTEMPTS, Err(error.clone())), "bounded, the last error returned");

        let mut calls = 0;
        let outcome = retry_on_taken_port(|n| {
            calls += 1;
            if n < 2 {
                Err(error.clone())
            } else {
                Ok(n)
            }
        });
        assert_eq!((calls, outcome), (2, Ok(2)), "a taken port is retried on the next attempt");

        let mut calls = 0;
        let outcome: std::result::Result<(), &str> = retry_on_taken_port(|_| {
            calls += 1;
            Err("connection refused")
        });
        assert_eq!((calls, outcome), (1, Err("connection refused")), "other failures are not retried");
    }
}
