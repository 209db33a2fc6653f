//! A Tansu broker (Kafka protocol) as a child process on a free port.
//!
//! The command line is
//!
//! ```text
//! tansu broker --listener-url tcp://127.0.0.1:PORT --advertised-listener-url tcp://127.0.0.1:PORT
//!              --storage-engine memory://tansu/     (or sqlite://tansu.db, relative to the cwd)
//!              [--authentication]                   (SASL/SCRAM: Tansu::start_sasl, start_sasl_tls)
//! ```
//!
//! run with its working directory in a temporary directory: Tansu resolves a `sqlite://` path
//! relative to its working directory (even one written as absolute), and reads a `.env` file
//! from there. Its output goes to `tansu.log` in the same directory, quoted in errors.
//!
//! Readiness is a Kafka metadata request answered by the broker, not merely an open port:
//! clients get the advertised address from that answer, so it proves the whole bootstrap path.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tempfile::TempDir;

use crate::ports::free_port;
use crate::process::{describe, find_binary, Watchdog};
use crate::{Error, Result, TestCa};

/// How many fresh ports a start tries before giving up (see the crate docs on ports).
const START_ATTEMPTS: u32 = 5;
/// How long a start may take before the broker counts as broken. Tansu starts in well under a
/// second; the margin is for a loaded 2-core CI machine running many tests at once.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of a single Kafka request made by the harness.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const MISSING_HINT: &str = "run deploy/test.sh or cargo install tansu --locked --features dynostore,libsql";

/// Where the broker keeps its topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TansuStorage {
    /// In memory: fastest; everything is lost when the process stops.
    #[default]
    Memory,
    /// A libsql (SQLite) file in the broker's temporary directory: survives
    /// [`Tansu::kill`] + [`Tansu::restart`], for tests of a broker restart.
    Sqlite,
}

impl TansuStorage {
    fn url(self) -> &'static str {
        match self {
            TansuStorage::Memory => "memory://tansu/",
            // Relative to the process's working directory, the broker's temporary directory.
            TansuStorage::Sqlite => "sqlite://tansu.db",
        }
    }
}

/// A running (or killed) Tansu broker owned by one test. Dropping it kills the process and
/// removes its directory.
#[derive(Debug)]
pub struct Tansu {
    binary: PathBuf,
    storage: TansuStorage,
    port: u16,
    child: Option<Child>,
    /// Kills the process and removes the directory if the test process dies without dropping
    /// this handle.
    watchdog: Option<Watchdog>,
    /// Working directory: log file and, with [`TansuStorage::Sqlite`], the data.
    dir: TempDir,
    /// With [`Tansu::start_tls`]: the CA certificate clients trust (the server's certificate
    /// and key are `server.crt`/`server.key` in `dir`).
    tls_root: Option<PathBuf>,
    /// With TLS: the port Tansu itself listens on (plain text, behind the proxy); else `port`.
    inner_port: u16,
    /// With TLS: the `socat` process terminating TLS on `port`, and its watchdog.
    proxy: Option<(Child, Watchdog)>,
    /// With [`Tansu::start_sasl`]: the one user's name and password (SCRAM-SHA-512).
    sasl: Option<(String, String)>,
}

impl Tansu {
    /// Starts a broker with in-memory storage on a free port.
    pub fn start() -> Result<Tansu> {
        Tansu::start_with(TansuStorage::Memory)
    }

    /// Starts a broker with the given storage on a free port.
    ///
    /// Fails with [`Error::MissingBinary`] when `tansu` is neither on `PATH` nor in
    /// `$TANSU_BIN`, `$CARGO_HOME/bin` or `~/.cargo/bin`.
    pub fn start_with(storage: TansuStorage) -> Result<Tansu> {
        Tansu::start_inner(storage, None)
    }

    /// Starts an in-memory broker that clients reach over TLS only, with a certificate for
    /// `127.0.0.1` signed by `ca`. Clients need [`client_options`](Self::client_options).
    ///
    /// Tansu 0.6 has TLS options, but its command line refuses `--cert` together with `--key`
    /// (both are in one exclusive argument group). So `socat` terminates TLS on
    /// [`port`](Self::port), which Tansu advertises, and forwards to Tansu listening on
    /// another port of 127.0.0.1. Clients see a TLS-only broker either way.
    pub fn start_tls(ca: &TestCa) -> Result<Tansu> {
        Tansu::start_inner(TansuStorage::Memory, Some(ca))
    }

    /// Starts a broker that admits authenticated clients only: SASL/SCRAM-SHA-512 over plain
    /// TCP, with one user `user` whose password is `password`. Clients need
    /// [`client_options`](Self::client_options).
    ///
    /// Tansu 0.6 lets only authenticated clients change users once authentication is on, so
    /// the user is created first (`tansu user create`) on a broker without it, which is then
    /// restarted with `--authentication` on the same file storage.
    pub fn start_sasl(user: &str, password: &str) -> Result<Tansu> {
        Tansu::start_sasl_inner(user, password, None)
    }

    /// [`start_sasl`](Self::start_sasl) behind TLS, as in [`start_tls`](Self::start_tls):
    /// clients reach it with `SASL_SSL`, as managed Kafka services require.
    pub fn start_sasl_tls(ca: &TestCa, user: &str, password: &str) -> Result<Tansu> {
        Tansu::start_sasl_inner(user, password, Some(ca))
    }

    fn start_sasl_inner(user: &str, password: &str, tls: Option<&TestCa>) -> Result<Tansu> {
        let mut tansu = Tansu::start_inner(TansuStorage::Sqlite, tls)?;
        let mut command = Command::new(&tansu.binary);
        command
            // Tansu's own port: the CLI speaks plain TCP, and behind TLS that is the inner one.
            .args(["user", "create", "--broker", &format!("tcp://127.0.0.1:{}", tansu.inner_port), user, password])
            .args(["--mechanism", "scram512"])
            .current_dir(tansu.dir.path())
            .stdin(Stdio::null());
        let output = command.output().map_err(|source| Error::Spawn { command: describe(&command), source })?;
        if !output.status.success() {
            return Err(tansu.not_ready(format!(
                "`tansu user create` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        tansu.sasl = Some((user.to_owned(), password.to_owned()));
        tansu.restart()?;
        Ok(tansu)
    }

    /// The librdkafka settings a client needs besides `bootstrap.servers`: with TLS
    /// ([`start_tls`](Self::start_tls)) `security.protocol=SSL` and the CA; with SASL
    /// ([`start_sasl`](Self::start_sasl)) `SASL_PLAINTEXT`, SCRAM-SHA-512 and the user's
    /// credentials; with both `SASL_SSL`, the CA and the credentials; else none.
    pub fn client_options(&self) -> Vec<(String, String)> {
        let protocol = match (&self.tls_root, &self.sasl) {
            (None, None) => return Vec::new(),
            (Some(_), None) => "SSL",
            (None, Some(_)) => "SASL_PLAINTEXT",
            (Some(_), Some(_)) => "SASL_SSL",
        };
        let mut options = vec![("security.protocol".to_owned(), protocol.to_owned())];
        if let Some(root) = &self.tls_root {
            options.push(("ssl.ca.location".into(), root.display().to_string()));
        }
        if let Some((user, password)) = &self.sasl {
            options.push(("sasl.mechanism".into(), "SCRAM-SHA-512".into()));
            options.push(("sasl.username".into(), user.clone()));
            options.push(("sasl.password".into(), password.clone()));
        }
        options
    }

    fn start_inner(storage: TansuStorage, tls: Option<&TestCa>) -> Result<Tansu> {
        let binary = tansu_binary()?;
        let dir = tempfile::Builder::new().prefix("encore-tansu-").tempdir().map_err(|source| Error::Io {
            action: "creating a temporary directory in",
            path: std::env::temp_dir(),
            source,
        })?;
        let tls_root = match tls {
            Some(ca) => {
                ca.issue(dir.path(), "server", "127.0.0.1", &["127.0.0.1"])?;
                Some(ca.root_path())
            }
            None => None,
        };
        let mut tansu =
            Tansu { binary, storage, port: 0, child: None, watchdog: None, dir, tls_root, inner_port: 0, proxy: None, sasl: None };
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            tansu.port = free_port()?;
            tansu.inner_port = if tansu.tls_root.is_some() { free_port()? } else { tansu.port };
            match tansu.spawn_and_wait() {
                Ok(()) => return Ok(tansu),
                // Most likely the port was taken between `free_port` and the bind: retry (with
                // TLS, the proxy too, on the new port).
                Err(error) => {
                    tansu.stop_proxy();
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| tansu.not_ready("no start attempted".into())))
    }

    /// The bootstrap address for Kafka clients, `127.0.0.1:PORT`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The TCP port the broker listens on (the same across [`kill`](Self::kill) and
    /// [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The storage this broker was started with.
    pub fn storage(&self) -> TansuStorage {
        self.storage
    }

    /// The broker's log (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    /// Whether the broker process is running (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Creates `name` with `partitions` partitions (replication factor 1) and waits until the
    /// broker's metadata lists all of them.
    ///
    /// Topics are always created explicitly: Tansu with file storage stalls on auto-creation.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().map_err(|source| self.kafka_error(source))?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = futures_executor::block_on(admin.create_topics([&topic], &options)).map_err(|source| self.kafka_error(source))?;
        for result in results {
            if let Err((topic, code)) = result {
                return Err(Error::CreateTopic { topic, reason: format!("{code:?}: {code}") });
            }
        }
        // The admin call returns once the broker accepted the request; wait until metadata
        // shows every partition so that producers started next see the full topic.
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let metadata = admin.inner().fetch_metadata(Some(name), REQUEST_TIMEOUT).map_err(|source| self.kafka_error(source))?;
            let listed = metadata
                .topics()
                .iter()
                .find(|topic| topic.name() == name)
                .filter(|topic| topic.error().is_none())
                .map_or(0, |topic| topic.partitions().len());
            if usize::try_from(partitions).is_ok_and(|wanted| listed >= wanted) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::CreateTopic {
                    topic: name.to_owned(),
                    reason: format!("metadata lists {listed} of {partitions} partitions after {REQUEST_TIMEOUT:?}"),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Kills the broker process (SIGKILL: no clean shutdown), keeping its port and directory so
    /// that [`restart`](Self::restart) brings it back at the same address.
    pub fn kill(&mut self) -> Result<()> {
        self.watchdog = None;
        if let Some(mut child) = self.child.take() {
            // An error means the process already exited, which is what we want.
            let _already_exited = child.kill();
            child.wait().map_err(|source| Error::Io {
                action: "waiting for tansu to exit, pid",
                path: child.id().to_string().into(),
                source,
            })?;
        }
        Ok(())
    }

    /// Deletes the messages of `topic` below offset `before` of each `(partition, before)`, as
    /// retention does, and restarts the broker: each low watermark is then its `before`. Tansu 0.6 does not
    /// implement Kafka's DeleteRecords, so this edits its SQLite storage (the `record` rows
    /// and the partition's `watermark`) while the broker is stopped, with the `sqlite3`
    /// command (`deploy/test.sh` installs it). Only for [`TansuStorage::Sqlite`].
    pub fn delete_records_before(&mut self, topic: &str, partitions: &[(i32, i64)]) -> Result<()> {
        assert_eq!(self.storage, TansuStorage::Sqlite, "deleting records needs the SQLite storage");
        self.kill()?;
        // Topic names are [a-zA-Z0-9._-] (Kafka's rule), so quoting them in SQL is safe.
        assert!(topic.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)), "a Kafka topic name");
        let mut sql = String::new();
        for (partition, before) in partitions {
            let topition = format!(
                "(SELECT tp.id FROM topition tp JOIN topic t ON tp.topic = t.id WHERE t.name = '{topic}' AND tp.partition = {partition})"
            );
            sql.push_str(&format!(
                "DELETE FROM header WHERE topition = {topition} AND offset_id < {before};\n\
                 DELETE FROM record WHERE topition = {topition} AND offset_id < {before};\n\
                 UPDATE watermark SET low = {before} WHERE topition = {topition};\n"
            ));
        }
        let mut command = Command::new("sqlite3");
        command.arg("tansu.db").arg(&sql).current_dir(self.dir.path()).stdin(Stdio::null());
        let output = command.output().map_err(|source| Error::Spawn { command: describe(&command), source })?;
        if !output.status.success() {
            return Err(Error::CommandFailed {
                command: describe(&command),
                status: output.status,
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        self.spawn_and_wait()
    }

    /// Starts a killed broker again on the same port. With [`TansuStorage::Memory`] its topics
    /// and messages are gone; with [`TansuStorage::Sqlite`] they survive.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn_and_wait()
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let listener = format!("tcp://127.0.0.1:{}", self.inner_port);
        let advertised = format!("tcp://127.0.0.1:{}", self.port);
        if self.tls_root.is_some() && self.proxy.is_none() {
            self.proxy = Some(self.spawn_proxy()?);
        }
        let mut command = Command::new(&self.binary);
        command
            .arg("broker")
            .args(["--listener-url", &listener])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", self.storage.url()])
            .args(self.sasl.is_some().then_some("--authentication"))
            .current_dir(self.dir.path())
            // Tansu logs through `RUST_LOG`; a test run's own setting would flood its log.
            .env("RUST_LOG", std::env::var("ENCORE_TANSU_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null());
        let log_path = self.log_path();
        let log = File::options().create(true).append(true).open(&log_path).map_err(|source| Error::Io {
            action: "opening",
            path: log_path.clone(),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| Error::Io { action: "duplicating the handle of", path: log_path, source })?;
        command.stdout(log).stderr(log_err);
        let child = command.spawn().map_err(|source| Error::Spawn { command: describe(&command), source })?;
        let pid = child.id().to_string();
        self.child = Some(child);
        let kill = ["kill", "-9", &pid].map(std::ffi::OsStr::new);
        self.watchdog = Some(Watchdog::spawn(self.dir.path(), &kill)?);
        match self.wait_until_ready() {
            Ok(()) => Ok(()),
            Err(error) => {
                // Do not leave a half-started broker behind for the retry to collide with.
                let _ = self.kill();
                Err(error)
            }
        }
    }

    fn stop_proxy(&mut self) {
        if let Some((mut proxy, _watchdog)) = self.proxy.take() {
            // An error means it already exited, which is what we want.
            let _already_exited = proxy.kill();
            let _ = proxy.wait();
        }
    }

    /// `socat` terminating TLS on `port` and forwarding each connection to Tansu.
    fn spawn_proxy(&self) -> Result<(Child, Watchdog)> {
        let socat = find_binary("socat", &[])
            .ok_or(Error::MissingBinary { binary: "socat", hint: "install it (apt-get install socat) or run deploy/test.sh" })?;
        let mut command = Command::new(socat);
        command
            .arg(format!("OPENSSL-LISTEN:{},bind=127.0.0.1,reuseaddr,fork,cert=server.crt,key=server.key,verify=0", self.port))
            .arg(format!("TCP:127.0.0.1:{}", self.inner_port))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().map_err(|source| Error::Spawn { command: describe(&command), source })?;
        let pid = child.id().to_string();
        let kill = ["kill", "-9", &pid].map(std::ffi::OsStr::new);
        let watchdog = Watchdog::spawn(self.dir.path(), &kill)?;
        Ok((child, watchdog))
    }

    fn wait_until_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        // Tansu's own port: with TLS, the proxy's accepts before Tansu is up.
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.inner_port));
        // First the port (cheap to poll), then one metadata round trip.
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(self.not_ready(format!("tansu exited with {status}")));
                }
            }
            if TcpStream::connect_timeout(&address, POLL_INTERVAL).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(self.not_ready(format!("port closed after {READY_TIMEOUT:?}")));
            }
            thread::sleep(POLL_INTERVAL);
        }
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().map_err(|source| self.kafka_error(source))?;
        match admin.inner().fetch_metadata(None, REQUEST_TIMEOUT) {
            Ok(metadata) if metadata.brokers().iter().any(|broker| broker.port() == i32::from(self.port)) => {
                // Another broker that took the port first would answer the same way: ours must
                // still be running (a broker that could not bind its port exits).
                match self.child.as_mut().map(Child::try_wait) {
                    Some(Ok(None)) => Ok(()),
                    other => Err(self.not_ready(format!("the answer came from another broker: ours has ended ({other:?})"))),
                }
            }
            Ok(metadata) => Err(self.not_ready(format!(
                "metadata advertises {:?}, not this port",
                metadata.brokers().iter().map(|broker| format!("{}:{}", broker.host(), broker.port())).collect::<Vec<_>>()
            ))),
            Err(error) => Err(self.not_ready(format!("metadata request failed: {error}"))),
        }
    }

    /// Produces `payloads` to `topic` with `acks=all` and returns once every one is
    /// delivered. `partition(i)` places message `i`; `None` leaves it to the partitioner, with
    /// the message's index as its key (so messages spread over all partitions).
    ///
    /// With `one_batch_each`, every message is its own record batch: Tansu 0.6 reports "the
    /// last batch's base offset + 1" as a partition's high watermark, which is then exact.
    pub fn produce(&self, topic: &str, payloads: &[Vec<u8>], partition: impl Fn(usize) -> Option<i32>, one_batch_each: bool) -> Result<()> {
        self.produce_with(topic, payloads, partition, one_batch_each, &[])
    }

    /// [`produce`](Self::produce) with extra librdkafka producer `settings`, applied last, e.g.
    /// `("compression.type", "zstd")` to write the topic in a given codec.
    pub fn produce_with(
        &self,
        topic: &str,
        payloads: &[Vec<u8>],
        partition: impl Fn(usize) -> Option<i32>,
        one_batch_each: bool,
        settings: &[(&str, &str)],
    ) -> Result<()> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.brokers()).set("acks", "all");
        for (key, value) in self.client_options() {
            config.set(key, value);
        }
        if one_batch_each {
            config.set("linger.ms", "0").set("batch.num.messages", "1");
        }
        for (key, value) in settings {
            config.set(*key, *value);
        }
        let producer: ThreadedProducer<DefaultProducerContext> = config.create().map_err(|source| self.kafka_error(source))?;
        for (index, payload) in payloads.iter().enumerate() {
            let key = index.to_string();
            let mut record = BaseRecord::to(topic).payload(payload).key(&key);
            if let Some(partition) = partition(index) {
                record = record.partition(partition);
            }
            // A full local queue hands the record back: wait for deliveries and try again.
            while let Err((_, returned)) = producer.send(record) {
                record = returned;
                thread::sleep(Duration::from_millis(10));
            }
        }
        producer.flush(Duration::from_secs(60)).map_err(|source| self.kafka_error(source))
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.brokers())
            // The harness's own requests should fail fast rather than retry for minutes.
            .set("socket.timeout.ms", REQUEST_TIMEOUT.as_millis().to_string())
            // Keep librdkafka's connection-refused chatter out of the test output.
            .set("log_level", "3");
        for (key, value) in self.client_options() {
            config.set(key, value);
        }
        config
    }

    fn kafka_error(&self, source: rdkafka::error::KafkaError) -> Error {
        Error::Kafka { brokers: self.brokers(), source }
    }

    fn not_ready(&self, reason: String) -> Error {
        Error::not_ready("tansu", self.port, reason, self.log_path())
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Err(error) = self.kill() {
            eprintln!("encore-testkit: stopping tansu on port {}: {error}", self.port);
        }
        self.stop_proxy();
    }
}

/// The `tansu` binary the harness runs: `$TANSU_BIN`, then `tansu` on `PATH`, in
/// `$CARGO_HOME/bin`, or in `~/.cargo/bin` (where `cargo install` puts it).
pub fn tansu_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("TANSU_BIN").map(PathBuf::from) {
        if path.is_file() {
            return Ok(path);
        }
    }
    let cargo_dirs: Vec<PathBuf> = [
        std::env::var_os("CARGO_HOME").map(|home| Path::new(&home).join("bin")),
        std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin")),
    ]
    .into_iter()
    .flatten()
    .collect();
    find_binary("tansu", &cargo_dirs).ok_or(Error::MissingBinary { binary: "tansu", hint: MISSING_HINT })
}
