//! Real servers for encore's integration tests: a Kafka-protocol broker (Tansu) and a
//! PostgreSQL 15 cluster, each started on its own free port and torn down on drop.
//!
//! encore's guarantees (exactly-once delivery into Postgres, restart after a crash) can only be
//! tested against the real things, so tests start them rather than mocking them. Every handle
//! owns its ports and its temporary directory, which lets `cargo test` run tests in parallel
//! without any manual setup once the binaries are installed (`deploy/test.sh` installs them).
//!
//! ```no_run
//! use encore_testkit::{Postgres, Tansu};
//!
//! # fn main() -> Result<(), encore_testkit::Error> {
//! let postgres = Postgres::start()?;
//! let tansu = Tansu::start()?;
//! tansu.create_topic("music_streaming_data", 4)?;
//! // Hand `tansu.brokers()` and `postgres.url()` to the code under test.
//! # Ok(()) }
//! ```
//!
//! The [`cli`] module runs the workspace's binaries and asserts on how they exit
//! ([`assert_one_line_error`], [`assert_success`], [`run_bin`]); [`free_port`] and
//! [`free_port_on`] pick ports for the programs under test. Test files use these instead of
//! copies of their own. The [`grafana`] module reads the Grafana dashboard's queries and the
//! metric names they select, for the tests that hold it to the code.
//!
//! # How the servers run
//!
//! * **PostgreSQL**: `initdb` creates a cluster in a temporary directory with trust
//!   authentication, `pg_ctl` starts it listening on 127.0.0.1 with its unix socket inside the
//!   same directory (so no system path is touched) and `fsync` off, because a test's data is
//!   thrown away anyway. PostgreSQL refuses to run as root, so when the tests run as root (CI)
//!   the directory is handed to the `postgres` user and every server command runs through
//!   `runuser -u postgres --`.
//! * **Tansu**: the `tansu broker` process with in-memory storage (or a libsql file in a
//!   temporary directory, for tests that restart the broker), listening *and advertising*
//!   `127.0.0.1`: clients connect to the advertised address, and `localhost` may resolve to
//!   `::1`, where nothing listens. Topics are created explicitly through the Kafka admin API.
//! * **TLS** (`Postgres::start_tls`, `Tansu::start_tls`): certificates for `127.0.0.1` from a
//!   throwaway [`TestCa`]. Postgres serves TLS itself and refuses plain TCP; Tansu is put
//!   behind `socat`, which terminates TLS on the advertised port (Tansu 0.6's command line
//!   cannot take a certificate and a key together).
//!
//! # Ports
//!
//! A free port is found by binding port 0 and releasing it; another process can take it
//! before the server binds it, so a server that fails to start is retried on a fresh port
//! a few times before the error is returned. Tests do the same for the programs they start
//! on ports named in advance ([`retry_on_taken_port`]), and pass port 0 where a program can
//! bind it and say what it bound (see the `ports` module).

//!
//! # Environment
//!
//! * `TANSU_BIN`: the `tansu` binary, if it is not on `PATH` or in `~/.cargo/bin`.
//! * `PG_BIN`: the directory of `initdb` and `pg_ctl`, if they are not on `PATH` or in
//!   `/usr/lib/postgresql/<version>/bin`.
//! * `ENCORE_TANSU_LOG`: Tansu's log filter (its `RUST_LOG`), `warn` by default; the log is in
//!   [`Tansu::log_path`] and its tail is quoted when a broker fails to start.
//!
//! # Cleanup
//!
//! Dropping a handle stops its server and deletes its directory. For the cases where no
//! destructor runs (the test process is killed or aborts, or a handle lives in a `static`
//! shared by the tests of one binary) each server has a watchdog: a small `sh` process that
//! checks once a second whether the test process still exists and, once it does not, stops
//! the server and deletes its directory.

pub mod cli;
mod error;
pub mod grafana;
mod ports;
mod postgres;
mod process;
pub mod processes;
mod tansu;
mod tls;

pub use cli::{assert_one_line_error, assert_success, run_bin};
pub use error::Error;
pub use ports::{address_was_taken, free_port, free_port_on, free_ports_on, retry_on_taken_port, PORT_ATTEMPTS};
pub use postgres::{postgres_bin_dir, Postgres, CERT_ROLE};
pub use tansu::{tansu_binary, Tansu, TansuStorage};
pub use tls::TestCa;

/// The result type of every fallible testkit call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
