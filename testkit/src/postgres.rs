//! A throwaway PostgreSQL cluster: `initdb` into a temporary directory, `pg_ctl` to start and
//! stop it, everything removed on drop.
//!
//! Layout of the temporary directory (owned by the `postgres` user when we run as root):
//!
//! ```text
//! encore-pg-XXXXXX/
//!   data/          the cluster (PGDATA)
//!   socket/        unix socket directory, so no system path such as /var/run is needed
//!   postgres.log   the server's log, quoted in errors
//! ```
//!
//! [`Postgres::start_tls`] starts a cluster that refuses TCP clients without TLS, with a
//! server certificate for `127.0.0.1` signed by a [`TestCa`]. The harness's own admin
//! connections go over the unix socket, which TLS rules do not cover.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::ports::free_port;
use crate::process::{command_as, describe, find_binary, is_root, run, Watchdog};
use crate::tls::{set_owner_only, TestCa};
use crate::{Error, Result};

/// How many fresh ports a start tries before giving up (see the crate docs on ports).
const START_ATTEMPTS: u32 = 5;
/// Seconds `pg_ctl` waits for the server to accept connections.
const START_TIMEOUT_SECS: &str = "60";
/// The user that owns the cluster when the tests run as root.
const POSTGRES_USER: &str = "postgres";
const MISSING_HINT: &str = "install PostgreSQL 15 server binaries (apt-get install postgresql-15) or run deploy/test.sh";

/// Settings appended to `postgresql.conf`. Durability settings are off because a test's data
/// dies with the test; everything else keeps the server private to this cluster.
const SETTINGS: &str = "
# Written by encore-testkit.
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
# Tests run many clients at once (several workers, pools); the default of 100 is enough but
# shared_buffers stays small so that parallel clusters fit in memory.
shared_buffers = 32MB
max_connections = 100
";

/// Settings added for [`Postgres::start_tls`]; the files are in the data directory.
const TLS_SETTINGS: &str = "
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
# Client certificates (the `cert` rule below) are checked against the test CA.
ssl_ca_file = 'root.crt'
";

/// The role that [`Postgres::add_cert_role`] creates, and that TLS clusters let in by client
/// certificate alone (its rule is written before the server starts, so no reload is raced).
pub const CERT_ROLE: &str = "encore_cert";

/// A running (or stopped) PostgreSQL cluster owned by one test.
///
/// Dropping it stops the server (immediately: the data is discarded) and removes its directory.
#[derive(Debug)]
pub struct Postgres {
    /// Deleted on drop, after `Drop::drop` has stopped the server.
    dir: TempDir,
    bin_dir: PathBuf,
    /// `Some("postgres")` when commands must run through `runuser`.
    run_as: Option<&'static str>,
    port: u16,
    running: bool,
    /// Stops the server and removes the directory if the test process dies without dropping
    /// this handle.
    watchdog: Option<Watchdog>,
}

impl Postgres {
    /// Creates a cluster in a new temporary directory and starts it on a free port.
    ///
    /// Fails with [`Error::MissingBinary`] when `initdb`/`pg_ctl` cannot be found (on `PATH`,
    /// in `$PG_BIN`, or in `/usr/lib/postgresql/*/bin`).
    pub fn start() -> Result<Postgres> {
        Postgres::start_with(None)
    }

    /// As [`start`](Self::start), with TLS: the server presents a certificate for `127.0.0.1`
    /// (IP only, so `localhost` does not match it) signed by `ca`, and refuses TCP clients
    /// that do not use TLS. [`CERT_ROLE`] logs in by a client certificate from `ca`.
    pub fn start_tls(ca: &TestCa) -> Result<Postgres> {
        Postgres::start_with(Some(ca))
    }

    fn start_with(tls: Option<&TestCa>) -> Result<Postgres> {
        let bin_dir = postgres_bin_dir()?;
        let run_as = is_root().then_some(POSTGRES_USER);
        let dir = tempfile::Builder::new().prefix("encore-pg-").tempdir().map_err(|source| Error::Io {
            action: "creating a temporary directory in",
            path: std::env::temp_dir(),
            source,
        })?;
        let socket_dir = dir.path().join("socket");
        fs::create_dir(&socket_dir).map_err(|source| Error::Io { action: "creating", path: socket_dir.clone(), source })?;
        if let Some(user) = run_as {
            // The server process must own its data directory and be able to write its log and
            // socket; `TempDir` creates the directory as mode 0700 for us (root).
            run(std::process::Command::new("chown").arg("-R").arg(format!("{user}:")).arg(dir.path()))?;
        }
        let mut postgres = Postgres { dir, bin_dir, run_as, port: 0, running: false, watchdog: None };
        postgres.init()?;
        if let Some(ca) = tls {
            postgres.configure_tls(ca)?;
        }
        postgres.start_on_free_port()?;
        postgres.watchdog = Some(postgres.spawn_watchdog()?);
        Ok(postgres)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`: trust authentication, no password.
    pub fn url(&self) -> String {
        format!("postgres://{POSTGRES_USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// Creates a login role that must authenticate with `password` (scram-sha-256 over TCP)
    /// and may create schemas in the database, and returns its URL, which holds no password:
    /// for testing that a password kept out of the URL is found elsewhere (`PGPASSWORD`).
    pub fn add_password_role(&self, role: &str, password: &str) -> Result<String> {
        let sql_failed = |source: postgres::Error| self.not_ready(format!("creating role {role}: {source}"));
        let mut admin = self.admin().map_err(sql_failed)?;
        let literal = format!("'{}'", password.replace('\'', "''"));
        admin
            .batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN PASSWORD {literal}; GRANT CREATE ON DATABASE postgres TO \"{role}\";"))
            .map_err(sql_failed)?;
        let hba = self.data_dir().join("pg_hba.conf");
        let rules =
            fs::read_to_string(&hba).and_then(|rules| fs::write(&hba, format!("host all {role} 127.0.0.1/32 scram-sha-256\n{rules}")));
        rules.map_err(|source| Error::Io { action: "adding a rule to", path: hba.clone(), source })?;
        admin.batch_execute("SELECT pg_reload_conf()").map_err(sql_failed)?;
        let url = format!("postgres://{role}@127.0.0.1:{}/postgres", self.port);
        // The reload is asynchronous: wait until a login without the password is refused.
        for _ in 0..250 {
            if postgres::Client::connect(&url, postgres::NoTls).is_err() {
                return Ok(url);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(self.not_ready(format!("{role} still logs in without a password after reloading {}", hba.display())))
    }

    /// Creates [`CERT_ROLE`] (allowed to create schemas) and returns its URL, which holds no
    /// TLS settings: on a [`start_tls`](Self::start_tls) cluster it logs in only over TLS with
    /// a client certificate whose common name is the role, issued by the cluster's CA.
    pub fn add_cert_role(&self) -> Result<String> {
        let sql_failed = |source: postgres::Error| self.not_ready(format!("creating role {CERT_ROLE}: {source}"));
        self.admin()
            .and_then(|mut admin| {
                admin.batch_execute(&format!("CREATE ROLE {CERT_ROLE} LOGIN; GRANT CREATE ON DATABASE postgres TO {CERT_ROLE};"))
            })
            .map_err(sql_failed)?;
        Ok(format!("postgres://{CERT_ROLE}@127.0.0.1:{}/postgres", self.port))
    }

    /// The directory of the server's unix socket (a `host` for connection strings).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    /// A superuser connection over the unix socket (which TLS-only rules do not cover).
    fn admin(&self) -> std::result::Result<postgres::Client, postgres::Error> {
        let mut config = postgres::Config::new();
        config.host_path(self.socket_dir()).port(self.port).user(POSTGRES_USER).dbname("postgres");
        config.connect(postgres::NoTls)
    }

    /// The TCP port the server listens on (the same across [`stop`](Self::stop) and
    /// [`start_again`](Self::start_again)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server log, useful when a test fails.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Whether the server is currently running (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Stops the server with a fast shutdown (clients are disconnected, the data is kept), so
    /// that a test can observe how the code under test copes with a database going away.
    pub fn stop(&mut self) -> Result<()> {
        self.pg_ctl_stop("fast")?;
        self.running = false;
        Ok(())
    }

    /// Starts the stopped server again on the same port and data directory.
    pub fn start_again(&mut self) -> Result<()> {
        if !self.running {
            self.pg_ctl_start()?;
            self.running = true;
        }
        Ok(())
    }

    fn init(&self) -> Result<()> {
        let mut initdb = command_as(self.run_as, &self.bin_dir.join("initdb"));
        initdb
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", POSTGRES_USER, "--auth=trust", "-E", "UTF8"])
            // C locale: independent of the host's locale settings, which CI may lack.
            .args(["--locale=C", "--no-sync", "--no-instructions"]);
        run(&mut initdb)?;
        let conf = self.data_dir().join("postgresql.conf");
        let socket_line = format!("unix_socket_directories = '{}'\n", self.dir.path().join("socket").display());
        let appended =
            OpenOptions::new().append(true).open(&conf).and_then(|mut file| file.write_all(format!("{SETTINGS}{socket_line}").as_bytes()));
        appended.map_err(|source| Error::Io { action: "appending settings to", path: conf, source })
    }

    /// Server certificate, CA for client certificates, `ssl = on`, and rules that refuse TCP
    /// without TLS and let [`CERT_ROLE`] in by certificate.
    fn configure_tls(&self, ca: &TestCa) -> Result<()> {
        let data = self.data_dir();
        let io_error = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { action, path, source }
        };
        let (cert, key) = ca.issue(&data, "server", "127.0.0.1", &["127.0.0.1"])?;
        fs::copy(ca.root_path(), data.join("root.crt")).map_err(io_error("copying the CA to", &data))?;
        let conf = data.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut file| file.write_all(TLS_SETTINGS.as_bytes()))
            .map_err(io_error("appending settings to", &conf))?;
        let hba = data.join("pg_hba.conf");
        let rules = fs::read_to_string(&hba).and_then(|rules| {
            fs::write(
                &hba,
                format!(
                    "# Written by encore-testkit: TLS only over TCP.\n\
                     hostnossl all all 0.0.0.0/0 reject\n\
                     hostssl all {CERT_ROLE} 127.0.0.1/32 cert\n{rules}"
                ),
            )
        });
        rules.map_err(io_error("adding rules to", &hba))?;
        if let Some(user) = self.run_as {
            for file in [&cert, &key, &data.join("root.crt")] {
                run(std::process::Command::new("chown").arg(format!("{user}:")).arg(file))?;
            }
        }
        set_owner_only(&key)
    }

    fn start_on_free_port(&mut self) -> Result<()> {
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            self.port = free_port()?;
            match self.pg_ctl_start() {
                Ok(()) => {
                    self.running = true;
                    return Ok(());
                }
                // Most likely the port was taken between `free_port` and the bind: retry.
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| self.not_ready("no start attempted".into())))
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let mut pg_ctl = command_as(self.run_as, &self.bin_dir.join("pg_ctl"));
        pg_ctl
            .arg("start")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", START_TIMEOUT_SECS])
            // The port is a command-line option rather than a setting so that a retry on a
            // new port does not have to edit the configuration.
            .arg("-o")
            .arg(format!("-p {}", self.port));
        match pg_ctl.output() {
            Ok(output) if output.status.success() => Ok(()),
            Ok(output) => Err(self.not_ready(format!(
                "{} exited with {}: {}",
                describe(&pg_ctl),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))),
            Err(source) => Err(Error::Spawn { command: describe(&pg_ctl), source }),
        }
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<()> {
        let mut pg_ctl = command_as(self.run_as, &self.bin_dir.join("pg_ctl"));
        pg_ctl.arg("stop").arg("-D").arg(self.data_dir()).args(["-m", mode, "-w", "-t", START_TIMEOUT_SECS]);
        run(&mut pg_ctl).map(drop)
    }

    fn spawn_watchdog(&self) -> Result<Watchdog> {
        let mut stop: Vec<OsString> = Vec::new();
        if let Some(user) = self.run_as {
            stop.extend(["runuser", "-u", user, "--"].map(OsString::from));
        }
        stop.push(self.bin_dir.join("pg_ctl").into());
        stop.extend(["stop", "-m", "immediate", "-D"].map(OsString::from));
        stop.push(self.data_dir().into());
        let stop: Vec<&std::ffi::OsStr> = stop.iter().map(OsString::as_os_str).collect();
        Watchdog::spawn(self.dir.path(), &stop)
    }

    fn not_ready(&self, reason: String) -> Error {
        Error::not_ready("postgres", self.port, reason, self.log_path())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            // Immediate: the data is about to be deleted, so there is nothing to flush. A
            // failure cannot be returned from `drop`; the directory is removed anyway, and a
            // server left behind shuts itself down once it notices (within about a minute)
            // that its `postmaster.pid` lock file is gone.
            if let Err(error) = self.pg_ctl_stop("immediate") {
                eprintln!("encore-testkit: stopping postgres on port {}: {error}", self.port);
            }
        }
    }
}

/// The directory holding the `initdb` and `pg_ctl` the harness runs: `$PG_BIN`, then `PATH`,
/// then the newest `/usr/lib/postgresql/<version>/bin`.
pub fn postgres_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        if dir.join("pg_ctl").is_file() && dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    let mut versioned: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin"))).collect())
        .unwrap_or_default();
    // Newest version first; directory names are major versions ("15", "16").
    versioned.sort_by_key(|dir| {
        std::cmp::Reverse(
            dir.parent().and_then(Path::file_name).and_then(|name| name.to_str()).and_then(|name| name.parse::<u32>().ok()).unwrap_or(0),
        )
    });
    let pg_ctl = find_binary("pg_ctl", &versioned).ok_or(Error::MissingBinary { binary: "pg_ctl", hint: MISSING_HINT })?;
    let dir = pg_ctl.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    if dir.join("initdb").is_file() {
        Ok(dir)
    } else {
        Err(Error::MissingBinary { binary: "initdb", hint: MISSING_HINT })
    }
}
