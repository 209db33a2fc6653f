//! Opening Postgres connections the way libpq users expect: one connection string, with
//! TLS chosen by `sslmode`.
//!
//! `encore-flow`, `encore-gen catalog` and the benchmarks open every Postgres connection
//! through a [`Target`]. It takes the string users already give psql: a URL
//! (`postgres://user@host/db?sslmode=verify-full`) or `key=value` pairs. It adds what
//! tokio-postgres leaves to its caller.
//!
//! **TLS, over rustls.** tokio-postgres has no TLS of its own and knows only three `sslmode`s:
//! `disable`, `prefer` and `require`. So libpq's TLS keys are taken out of the string here:
//! `sslmode` (all six values), `sslrootcert`, `sslcert` and `sslkey`. They map as follows:
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (default) | when the server offers TLS | only if a root certificate is found (then as `verify-ca`) |
//! | `require` | always, or the connection fails | likewise |
//! | `verify-ca` | always | chain to the root certificate |
//! | `verify-full` | always | chain, and the host name (or IP) in the certificate |
//!
//! * **`allow`** is treated as `prefer`. libpq tries plain text first; tokio-postgres cannot.
//! * **`sslrootcert`** is a PEM file of one or more CA certificates. `sslrootcert=system`
//!   means the operating system's trusted roots. As in libpq 16, `system` then defaults the
//!   mode to `verify-full` and refuses weaker ones: a public CA signs certificates for anyone,
//!   so only the name check makes it mean something.
//! * **Without `sslrootcert`**, `~/.postgresql/root.crt` is used if it exists, as libpq does.
//! * **Unix sockets** take no TLS whatever the mode, as in libpq: Postgres has none there.
//! * **`hostaddr` without `host`** connects to the address with no name to check, as in
//!   libpq: every mode but `verify-full` works, and `verify-full` is refused at start.
//! * **`sslcert` + `sslkey`** give a client certificate (PEM, for `cert` authentication).
//!   libpq's default files for these are not looked for.
//! * Not checking the certificate under `prefer`/`require` is libpq's choice too. It keeps
//!   passive eavesdroppers out, but not an active man in the middle. Users who need more set
//!   `verify-full`.
//!
//! **Environment fallbacks**, as in libpq. `PGPASSWORD`, `PGSSLMODE`, `PGSSLROOTCERT`,
//! `PGSSLCERT` and `PGSSLKEY` apply when the string does not set the same thing. The
//! environment, unlike the command line, is not shown by `ps`.
//!
//! **Password file**, as in libpq: without a password in the string or `PGPASSWORD`, the first
//! matching `host:port:database:user:password` line of `passfile` (a key of the string), else
//! of `PGPASSFILE`, else of `~/.pgpass`. A file named by `passfile` or `PGPASSFILE` that group
//! or others may read is an error (libpq skips it with a warning, which shows only as a failed
//! login); `~/.pgpass` is then skipped, as in libpq. The password is never part of an error
//! message or of `Debug` output.
//!
//! Certificates are read when the string is parsed, so a missing or malformed file is an error
//! at start-up, not on the first connect. A certificate the server presents that fails the
//! check is an error no retry can fix: [`is_tls_rejection`] tells callers with retry loops.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use postgres::config::{Host, SslMode as WireMode};
use postgres::{Client, NoTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The keys taken out of the connection string (they are not tokio-postgres options): the TLS
/// keys and libpq's `passfile`.
const TLS_KEYS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "passfile"];

/// Why a connection string cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// tokio-postgres refused the string.
    #[error("invalid Postgres URL: {}", with_cause(.0))]
    Url(postgres::Error),
    /// Bad percent-encoding in a URL's TLS parameter.
    #[error("invalid Postgres URL: {0}")]
    Syntax(String),
    /// An `sslmode` libpq does not know.
    #[error("invalid sslmode {0:?}: expected disable, allow, prefer, require, verify-ca or verify-full")]
    SslMode(String),
    /// `sslrootcert=system` with a mode that does not check the host name.
    #[error("sslrootcert=system needs sslmode=verify-full, not {0} (as in libpq)")]
    SystemRootsNeedVerifyFull(SslMode),
    /// `verify-ca`/`verify-full` without a root certificate.
    #[error(
        "sslmode={mode} needs a root certificate: give sslrootcert=FILE, or sslrootcert=system \
         for the system's trusted roots ({default} does not exist)"
    )]
    NoRootCertificate {
        /// The mode asked for.
        mode: SslMode,
        /// The default file that was looked for.
        default: String,
    },
    /// A certificate or key file could not be used.
    #[error("cannot use {what} {path}: {reason}")]
    File {
        /// Which file: "root certificate", "client certificate", "client key".
        what: &'static str,
        /// Its path.
        path: String,
        /// Why.
        reason: String,
    },
    /// `sslmode=verify-full` with `hostaddr` but no `host`: no name to check the certificate for.
    #[error(
        "sslmode=verify-full needs host=NAME, the name in the server's certificate: hostaddr alone \
         gives none to check (as in libpq); give both, or a weaker sslmode"
    )]
    VerifyFullNeedsHost,
    /// Only one of `sslcert` and `sslkey`.
    #[error("sslcert and sslkey go together: give both or neither")]
    ClientCertificatePair,
    /// rustls refused the configuration (an unusable client key, no trusted roots).
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// libpq's `sslmode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Never encrypt.
    Disable,
    /// libpq: plain text first. Here the same as [`Prefer`](Self::Prefer).
    Allow,
    /// Encrypt when the server offers TLS.
    Prefer,
    /// Always encrypt.
    Require,
    /// Always encrypt; the server's certificate must chain to the root certificate.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, Error> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(Error::SslMode(other.to_string())),
        })
    }

    /// Whether the certificate must be checked whatever root certificate is found.
    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// A parsed connection string: tokio-postgres's settings plus the TLS to connect with.
#[derive(Clone)]
pub struct Target {
    config: postgres::Config,
    mode: SslMode,
    /// `None` for `sslmode=disable`.
    tls: Option<MakeRustlsConnect>,
    /// Whether the server's certificate is checked (see the module docs).
    verified: bool,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The config's Debug hides the password.
        f.debug_struct("Target").field("config", &self.config).field("tls", &self.tls_summary()).finish()
    }
}

impl Target {
    /// Parses `url` with the process's environment as libpq's fallbacks (module docs).
    pub fn parse(url: &str) -> Result<Target, Error> {
        Target::parse_with_env(url, |key| std::env::var_os(key))
    }

    /// Parses `url`, looking up fallbacks (`PGPASSWORD`, `PGSSLMODE`, ..., and `HOME` for
    /// `~/.postgresql/root.crt`) with `env`.
    pub fn parse_with_env(url: &str, env: impl Fn(&str) -> Option<OsString>) -> Result<Target, Error> {
        let (rest, mut tls) = split_tls_params(url)?;
        let mut config: postgres::Config = rest.parse().map_err(Error::Url)?;
        if config.get_password().is_none() {
            if let Some(password) = env("PGPASSWORD") {
                config.password(password.as_encoded_bytes());
            }
        }
        for (slot, variable) in tls.iter_mut().zip(["PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY"]) {
            if slot.is_none() {
                *slot = env(variable).map(|value| value.to_string_lossy().into_owned());
            }
        }
        let [mode, root, cert, key, passfile] = tls;
        if config.get_password().is_none() {
            // libpq's password file: `passfile` in the string, else PGPASSFILE, else ~/.pgpass.
            // A file named explicitly must be usable; the default one is skipped when it is not
            // (as libpq does), so that an unrelated ~/.pgpass cannot stop a passwordless login.
            let named = passfile.map(PathBuf::from).or_else(|| env("PGPASSFILE").map(PathBuf::from));
            let password = match named {
                Some(path) => password_from_file(&config, &path)?,
                None => env("HOME").and_then(|home| password_from_file(&config, &PathBuf::from(home).join(".pgpass")).ok()).flatten(),
            };
            if let Some(password) = password {
                config.password(password);
            }
        }
        let system_roots = root.as_deref() == Some("system");
        let mode = match mode.as_deref().map(SslMode::parse).transpose()? {
            Some(mode) if system_roots && mode != SslMode::VerifyFull => return Err(Error::SystemRootsNeedVerifyFull(mode)),
            Some(mode) => mode,
            None if system_roots => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        // Postgres has no TLS on unix sockets, and libpq ignores sslmode there. tokio-postgres
        // with a TLS connector fails on them in every mode (no host name to give rustls).
        let sockets_only = !config.get_hosts().is_empty() && config.get_hosts().iter().all(|host| !matches!(host, Host::Tcp(_)));
        if mode == SslMode::Disable || sockets_only {
            config.ssl_mode(WireMode::Disable);
            return Ok(Target { config, mode, tls: None, verified: false });
        }
        // `hostaddr` without `host`: libpq connects to the address and, having no host name,
        // checks none, refusing verify-full ("host name must be specified for a verified SSL
        // connection"). tokio-postgres would hand rustls an empty name and fail in every mode,
        // so the addresses stand in as the names; only verify-full would read them.
        if config.get_hosts().is_empty() && !config.get_hostaddrs().is_empty() {
            if mode == SslMode::VerifyFull {
                return Err(Error::VerifyFullNeedsHost);
            }
            for addr in config.get_hostaddrs().to_vec() {
                config.host(&addr.to_string());
            }
        }
        config.ssl_mode(match mode {
            SslMode::Allow | SslMode::Prefer => WireMode::Prefer,
            _ => WireMode::Require,
        });

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match root {
            Some(root) if root == "system" => Some(system_root_store()?),
            Some(path) => Some(root_store(Path::new(&path))?),
            None => {
                let default = env("HOME").map(|home| PathBuf::from(home).join(".postgresql/root.crt"));
                match default {
                    Some(path) if path.exists() => Some(root_store(&path)?),
                    other if mode.verifies() => {
                        let default = other.map_or("~/.postgresql/root.crt".into(), |path| path.display().to_string());
                        return Err(Error::NoRootCertificate { mode, default });
                    }
                    _ => None,
                }
            }
        };
        let verified = roots.is_some();
        let chain = roots
            .map(|roots| WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build())
            .transpose()
            .map_err(|err| Error::Tls(err.to_string()))?;
        let verifier: Arc<dyn ServerCertVerifier> = match chain {
            Some(webpki) if mode == SslMode::VerifyFull => webpki,
            chain => Arc::new(Lenient { chain, provider: provider.clone() }),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| Error::Tls(err.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut client = match (cert, key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = certificates(Path::new(&cert), "client certificate")?;
                let key = PrivateKeyDer::from_pem_file(&key).map_err(|err| Error::File {
                    what: "client key",
                    path: key.clone(),
                    reason: err.to_string(),
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|err| Error::Tls(err.to_string()))?
            }
            _ => return Err(Error::ClientCertificatePair),
        };
        // As libpq 17 does: PostgreSQL 17 requires this ALPN name for `sslnegotiation=direct`,
        // and servers that do not know ALPN ignore it.
        client.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Target { config, mode, tls: Some(MakeRustlsConnect::new(client)), verified })
    }

    /// tokio-postgres's settings (host, user, timeouts, ...), to read.
    pub fn config(&self) -> &postgres::Config {
        &self.config
    }

    /// tokio-postgres's settings, to add defaults to (application name, timeouts, ...).
    pub fn config_mut(&mut self) -> &mut postgres::Config {
        &mut self.config
    }

    /// The `sslmode` in force.
    pub fn ssl_mode(&self) -> SslMode {
        self.mode
    }

    /// One phrase for logs: whether and how the connection is protected.
    pub fn tls_summary(&self) -> String {
        let mode = self.mode;
        match (&self.tls, mode) {
            (None, SslMode::Disable) => "sslmode=disable: not encrypted".into(),
            (None, _) => "unix socket: local, TLS does not apply".into(),
            (Some(_), _) => {
                let when = match mode {
                    SslMode::Allow | SslMode::Prefer => "encrypted if the server offers TLS",
                    _ => "encrypted",
                };
                let check = match (mode, self.verified) {
                    (SslMode::VerifyFull, _) => "certificate and host name checked",
                    (_, true) => "certificate chain checked",
                    (_, false) => "certificate not checked",
                };
                format!("sslmode={mode}: {when}, {check}")
            }
        }
    }

    /// Opens a connection (blocking client).
    pub fn connect(&self) -> Result<Client, postgres::Error> {
        match &self.tls {
            None => self.config.connect(NoTls),
            Some(tls) => self.config.connect(tls.clone()),
        }
    }
}

/// Whether `err` is the TLS layer refusing the server (its certificate failed the check, or
/// the handshake found nothing in common): retrying cannot help, unlike a dropped connection.
pub fn is_tls_rejection(err: &postgres::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

/// Quotes an SQL identifier: wrapped in `"` with every `"` doubled, so that any schema name,
/// including one with quotes, spaces or upper case, names exactly itself. Schemas come from
/// flags, never from data; `encore-flow` and `encore-gen` both quote them with this.
///
/// ```
/// assert_eq!(encore_pgconnect::quote_ident("public"), "\"public\"");
/// assert_eq!(encore_pgconnect::quote_ident("a\"b; DROP"), "\"a\"\"b; DROP\"");
/// ```
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text`, a client error's message, with where the password goes when it says the server
/// asked for one that neither the URL nor `PGPASSWORD` held ("password missing"); any other
/// text unchanged. The one wording `encore-flow` and `encore-gen` share.
///
/// ```
/// use encore_pgconnect::with_password_hint;
///
/// assert_eq!(
///     with_password_hint("invalid configuration: password missing".into()),
///     "invalid configuration: password missing (give it in the URL or in PGPASSWORD)"
/// );
/// assert_eq!(with_password_hint("connection refused".into()), "connection refused");
/// ```
pub fn with_password_hint(text: String) -> String {
    if text.ends_with("password missing") {
        format!("{text} (give it in the URL or in PGPASSWORD)")
    } else {
        text
    }
}

/// `err` with its cause: tokio-postgres keeps the reason (e.g. "unknown option") apart.
fn with_cause(err: &postgres::Error) -> String {
    match std::error::Error::source(err) {
        Some(cause) => format!("{err}: {cause}"),
        None => err.to_string(),
    }
}

fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let file_error = |reason: String| Error::File { what, path: path.display().to_string(), reason };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|err| file_error(err.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| file_error(err.to_string()))?;
    if certificates.is_empty() {
        return Err(file_error("no PEM certificate in it".into()));
    }
    Ok(certificates)
}

fn root_store(path: &Path) -> Result<RootCertStore, Error> {
    let mut store = RootCertStore::empty();
    for certificate in certificates(path, "root certificate")? {
        store.add(certificate).map_err(|err| Error::File {
            what: "root certificate",
            path: path.display().to_string(),
            reason: err.to_string(),
        })?;
    }
    Ok(store)
}

fn system_root_store() -> Result<RootCertStore, Error> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    // Unparsable entries in the system store are skipped, as browsers do.
    store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        let reasons: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(Error::Tls(format!("no trusted roots found in the system store ({})", reasons.join("; "))));
    }
    Ok(store)
}

/// The checks weaker than `verify-full`. With `chain`, `verify-ca`: the chain is checked, the
/// name is not. Without, `prefer`/`require` with no root certificate: any certificate is
/// accepted, as libpq does. Either way the handshake's signatures are checked, so the session
/// key belongs to whoever holds the presented certificate's key.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // webpki checks the name last, so this error means the chain passed.
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The values of the TLS keys and `passfile`, in [`TLS_KEYS`] order.
type TlsParams = [Option<String>; 5];

/// Splits the TLS keys out of a URL or `key=value` string; the rest is left as written for
/// tokio-postgres to parse (and to report its own syntax errors). A later occurrence of a key
/// wins, as in tokio-postgres.
fn split_tls_params(url: &str) -> Result<(String, TlsParams), Error> {
    let mut params: TlsParams = Default::default();
    let mut take = |key: &str, value: String| match TLS_KEYS.iter().position(|tls| *tls == key) {
        Some(index) => {
            params[index] = Some(value);
            true
        }
        None => false,
    };
    let prefix = ["postgres://", "postgresql://"].into_iter().find(|prefix| url.starts_with(prefix));
    let rest = match prefix {
        Some(prefix) => {
            // As tokio-postgres: credentials run to the first '@', the query from the next '?'.
            let after_prefix = prefix.len();
            let after_credentials = url[after_prefix..].find('@').map_or(after_prefix, |at| after_prefix + at + 1);
            match url[after_credentials..].find('?') {
                None => url.to_string(),
                Some(question) => {
                    let query_start = after_credentials + question + 1;
                    let mut kept = Vec::new();
                    for pair in url[query_start..].split('&') {
                        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                        if !take(&percent_decode(key)?, percent_decode(value)?) {
                            kept.push(pair);
                        }
                    }
                    let base = &url[..query_start - 1];
                    if kept.is_empty() {
                        base.to_string()
                    } else {
                        format!("{base}?{}", kept.join("&"))
                    }
                }
            }
        }
        None => {
            let mut rest = String::with_capacity(url.len());
            let mut copied = 0;
            for (span, key, value) in key_value_pairs(url) {
                if take(key, value) {
                    rest.push_str(&url[copied..span.0]);
                    copied = span.1;
                }
            }
            rest.push_str(&url[copied..]);
            rest
        }
    };
    Ok((rest, params))
}

/// The `key = value` pairs of a libpq key/value string, with each pair's byte span and its
/// unquoted value, as far as the string parses (tokio-postgres reports what does not).
fn key_value_pairs(s: &str) -> Vec<((usize, usize), &str, String)> {
    let bytes = s.as_bytes();
    let mut pairs = Vec::new();
    let mut i = 0;
    let skip_space = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_space(i);
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        let key = &s[start..i];
        i = skip_space(i);
        if key.is_empty() || bytes.get(i) != Some(&b'=') {
            return pairs;
        }
        i = skip_space(i + 1);
        let mut value = Vec::new();
        let quoted = bytes.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
        }
        loop {
            match bytes.get(i) {
                None if quoted => return pairs,
                None => break,
                Some(b'\'') if quoted => {
                    i += 1;
                    break;
                }
                Some(byte) if !quoted && byte.is_ascii_whitespace() => break,
                Some(b'\\') => match bytes.get(i + 1) {
                    Some(&escaped) => {
                        value.push(escaped);
                        i += 2;
                    }
                    None => return pairs,
                },
                Some(&byte) => {
                    value.push(byte);
                    i += 1;
                }
            }
        }
        // Only ASCII bytes were tested above, so the value is still valid UTF-8.
        pairs.push(((start, i), key, String::from_utf8_lossy(&value).into_owned()));
    }
}

/// The password for `config` in libpq's password file at `path` (`host:port:database:user:
/// password` lines, `*` matching anything, `\:` and `\\` escapes, `#` comments; the first line
/// that matches wins), or `None` when the file does not exist or no line matches. As libpq,
/// the host is `localhost` for a unix socket, the port 5432 and the database the user's name
/// unless given. A file that others may read is refused (libpq ignores it with a warning):
/// a password in it would be no secret.
fn password_from_file(config: &postgres::Config, path: &Path) -> Result<Option<Vec<u8>>, Error> {
    let file_error = |reason: String| Error::File { what: "password file", path: path.display().to_string(), reason };
    let Some(user) = config.get_user() else { return Ok(None) };
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => metadata,
        Ok(_) => return Err(file_error("not a regular file".into())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(file_error(error.to_string())),
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(file_error(format!(
                "group or others may access it (mode {:04o}): chmod 0600 it, as libpq requires",
                mode & 0o7777
            )));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|error| file_error(error.to_string()))?;
    let host = match (config.get_hosts().first(), config.get_hostaddrs().first()) {
        (Some(Host::Tcp(host)), _) => host.clone(),
        (Some(_unix_socket), _) => "localhost".to_owned(),
        (None, Some(addr)) => addr.to_string(),
        (None, None) => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432).to_string();
    let database = config.get_dbname().unwrap_or(user);
    let wanted = [host.as_str(), port.as_str(), database, user];
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let fields = passfile_fields(line);
        if fields.len() < 5 {
            continue;
        }
        if fields[..4].iter().zip(wanted).all(|(field, value)| field == "*" || field == value) {
            return Ok(Some(fields[4].clone().into_bytes()));
        }
    }
    Ok(None)
}

/// The colon-separated fields of a password file line, `\:` and `\\` unescaped.
fn passfile_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().expect("one field at least").extend(chars.next()),
            ':' => fields.push(String::new()),
            c => fields.last_mut().expect("one field at least").push(c),
        }
    }
    fields
}

fn percent_decode(s: &str) -> Result<String, Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|hex| u8::from_str_radix(hex, 16).ok());
            let byte = hex.ok_or_else(|| Error::Syntax(format!("bad percent-encoding in {s:?}")))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Syntax(format!("{s:?} does not decode to UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn split(url: &str) -> (String, TlsParams) {
        split_tls_params(url).unwrap()
    }

    #[test]
    fn tls_keys_leave_a_url_and_the_rest_stays() {
        let (rest, params) = split("postgres://u:p%3F@h:5/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca%20b.pem");
        assert_eq!(rest, "postgres://u:p%3F@h:5/db?application_name=x");
        assert_eq!(params[0].as_deref(), Some("verify-full"));
        assert_eq!(params[1].as_deref(), Some("/tmp/ca b.pem"));
        assert_eq!(split("postgresql://h/db?sslmode=require").0, "postgresql://h/db");
        // A '?' in the password is not the query (tokio-postgres reads credentials to '@').
        let (rest, params) = split("postgres://u:a?b@h/db");
        assert_eq!((rest.as_str(), params[0].as_deref()), ("postgres://u:a?b@h/db", None));
        assert!(matches!(split_tls_params("postgres://h/db?sslmode=%zz"), Err(Error::Syntax(_))));
    }

    #[test]
    fn tls_keys_leave_a_key_value_string_quoted_or_not() {
        let (rest, params) = split(r"host=h sslmode = 'verify-ca' user=u sslrootcert='/a b/it\'s.pem' sslkey=k\ x");
        assert_eq!(rest.split_whitespace().collect::<Vec<_>>(), ["host=h", "user=u"]);
        assert_eq!(params[0].as_deref(), Some("verify-ca"));
        assert_eq!(params[1].as_deref(), Some("/a b/it's.pem"));
        assert_eq!(params[3].as_deref(), Some("k x"));
        // Unparsable from some point: the rest is left for tokio-postgres to report.
        let (rest, params) = split("host=h sslmode='require");
        assert_eq!((rest.as_str(), params[0].as_deref()), ("host=h sslmode='require", None));
    }

    #[test]
    fn modes_map_to_the_wire_and_to_checking() {
        let target = Target::parse_with_env("postgres://h/db", no_env).unwrap();
        assert_eq!((target.ssl_mode(), target.config().get_ssl_mode()), (SslMode::Prefer, WireMode::Prefer));
        assert!(!target.verified && target.tls.is_some());
        let target = Target::parse_with_env("host=h sslmode=disable", no_env).unwrap();
        assert_eq!(target.config().get_ssl_mode(), WireMode::Disable);
        assert!(target.tls.is_none());
        let target = Target::parse_with_env("postgres://h/db?sslmode=require", no_env).unwrap();
        assert_eq!(target.config().get_ssl_mode(), WireMode::Require);
        assert!(target.tls_summary().contains("not checked"), "{}", target.tls_summary());
        let target = Target::parse_with_env("postgres://h/db?sslmode=allow", no_env).unwrap();
        assert_eq!(target.config().get_ssl_mode(), WireMode::Prefer);
    }

    #[test]
    fn system_roots_mean_verify_full() {
        // Reads the machine's trusted roots: Debian's ca-certificates, which any machine that
        // fetched crates from crates.io over HTTPS has (rustls-native-certs also honours
        // SSL_CERT_FILE).
        let target = Target::parse_with_env("postgres://h/db?sslrootcert=system", no_env).unwrap();
        assert_eq!((target.ssl_mode(), target.config().get_ssl_mode()), (SslMode::VerifyFull, WireMode::Require));
        assert_eq!(target.tls_summary(), "sslmode=verify-full: encrypted, certificate and host name checked");
    }

    #[test]
    fn unix_sockets_take_no_tls_whatever_the_mode() {
        let target = Target::parse_with_env("host=/run/postgresql user=u sslmode=verify-full", no_env).unwrap();
        assert_eq!(target.config().get_ssl_mode(), WireMode::Disable);
        assert!(target.tls.is_none());
        assert_eq!(target.tls_summary(), "unix socket: local, TLS does not apply");
        // One TCP host is enough to need TLS (and, for verify-full, a root certificate).
        let home = |key: &str| (key == "HOME").then(|| OsString::from("/nonexistent-home"));
        let err = Target::parse_with_env("host=/run/postgresql,db.example.com sslmode=verify-full", home).unwrap_err();
        assert!(matches!(err, Error::NoRootCertificate { .. }), "{err}");
    }

    #[test]
    fn checking_modes_need_a_root_certificate() {
        let home = |key: &str| (key == "HOME").then(|| OsString::from("/nonexistent-home"));
        for mode in ["verify-ca", "verify-full"] {
            let err = Target::parse_with_env(&format!("postgres://h/db?sslmode={mode}"), home).unwrap_err();
            assert!(matches!(err, Error::NoRootCertificate { .. }), "{err}");
            assert!(err.to_string().contains("/nonexistent-home/.postgresql/root.crt"), "{err}");
        }
        let err = Target::parse_with_env("postgres://h/db?sslmode=require&sslrootcert=system", no_env).unwrap_err();
        assert!(matches!(err, Error::SystemRootsNeedVerifyFull(SslMode::Require)), "{err}");
        let err = Target::parse_with_env("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent.pem", no_env).unwrap_err();
        assert!(err.to_string().starts_with("cannot use root certificate /nonexistent.pem:"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = Target::parse_with_env("postgres://h/db?sslmode=verify_full", no_env).unwrap_err();
        assert_eq!(err.to_string(), "invalid sslmode \"verify_full\": expected disable, allow, prefer, require, verify-ca or verify-full");
        let err = Target::parse_with_env("postgres://h/db?sslcert=/c.pem", no_env).unwrap_err();
        assert!(matches!(err, Error::ClientCertificatePair), "{err}");
        let err = Target::parse_with_env("postgres://h/db?nosuch=1", no_env).unwrap_err();
        assert!(err.to_string().contains("unknown option"), "{err}");
    }

    /// A password file with the given text and mode in a fresh directory.
    fn passfile(name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("encore-pgconnect-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pgpass");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_password_file_gives_the_password_of_the_first_matching_line() {
        let path = passfile("match", "# comment\nother:5432:db:u:wrong\nh:5433:*:u:port-5433\nh:*:db:u:p\\:w\\\\d\n*:*:*:*:any\n", 0o600);
        let file = path.display().to_string();
        let env = |key: &str| (key == "PGPASSFILE").then(|| OsString::from(&file));
        let password = |url: &str| Target::parse_with_env(url, env).unwrap().config().get_password().map(<[u8]>::to_vec);
        assert_eq!(password("postgres://u@h/db?sslmode=disable"), Some(b"p:w\\d".to_vec()), "escapes undone");
        assert_eq!(password("postgres://u@h:5433/db?sslmode=disable"), Some(b"port-5433".to_vec()));
        assert_eq!(password("postgres://v@elsewhere/x?sslmode=disable"), Some(b"any".to_vec()));
        // The string's own password, and PGPASSWORD, come first.
        assert_eq!(password("postgres://u:mine@h/db?sslmode=disable"), Some(b"mine".to_vec()));
        let with_pgpassword = |key: &str| match key {
            "PGPASSWORD" => Some(OsString::from("from-env")),
            _ => env(key),
        };
        let target = Target::parse_with_env("postgres://u@h/db?sslmode=disable", with_pgpassword).unwrap();
        assert_eq!(target.config().get_password(), Some(&b"from-env"[..]));
        // `passfile` in a key/value string; a file that does not exist gives nothing.
        let url = format!("host=h user=u dbname=db sslmode=disable passfile={file}");
        assert_eq!(Target::parse_with_env(&url, no_env).unwrap().config().get_password(), Some(&b"p:w\\d"[..]));
        let missing = |key: &str| (key == "PGPASSFILE").then(|| OsString::from("/nonexistent/pgpass"));
        assert_eq!(Target::parse_with_env("postgres://u@h/db?sslmode=disable", missing).unwrap().config().get_password(), None);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_password_file_others_may_read_is_refused_without_showing_its_content() {
        let path = passfile("open", "*:*:*:*:s3cret-in-file\n", 0o644);
        let file = path.display().to_string();
        let env = |key: &str| (key == "PGPASSFILE").then(|| OsString::from(&file));
        let err = Target::parse_with_env("postgres://u@h/db?sslmode=disable", env).unwrap_err().to_string();
        assert!(err.contains("chmod 0600") && err.contains(&file), "{err}");
        assert!(!err.contains("s3cret-in-file"), "{err}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn the_string_wins_over_the_environment() {
        let env = |key: &str| match key {
            "PGPASSWORD" => Some(OsString::from("from-env")),
            "PGSSLMODE" => Some(OsString::from("disable")),
            _ => None,
        };
        let target = Target::parse_with_env("postgres://u@h/db", env).unwrap();
        assert_eq!(target.config().get_password(), Some(&b"from-env"[..]));
        assert_eq!(target.ssl_mode(), SslMode::Disable);
        let target = Target::parse_with_env("postgres://u:mine@h/db?sslmode=require", env).unwrap();
        assert_eq!(target.config().get_password(), Some(&b"mine"[..]));
        assert_eq!(target.ssl_mode(), SslMode::Require);
    }
}
