//! Each `sslmode` against real Postgres servers: one that refuses TCP without TLS (server
//! certificate for 127.0.0.1 from a test CA) and one without TLS at all.

use std::ffi::OsString;

use encore_pgconnect::{is_tls_rejection, Target};
use encore_testkit::{Postgres, TestCa, CERT_ROLE};

/// No environment: these tests must not depend on the machine's `PG*` variables or `~/.postgresql`.
fn no_env(_: &str) -> Option<OsString> {
    None
}

fn target(url: &str) -> Target {
    Target::parse_with_env(url, no_env).unwrap_or_else(|err| panic!("{url}: {err}"))
}

/// Whether the session is encrypted, as the server sees it.
fn encrypted(url: &str) -> bool {
    let mut client = target(url).connect().unwrap_or_else(|err| panic!("{url}: {err:?}"));
    client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).unwrap().get(0)
}

/// The error of a connection expected to fail, with its causes.
fn refusal(url: &str) -> (String, bool) {
    match target(url).connect() {
        Ok(_) => panic!("{url} connected"),
        Err(err) => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            (text, is_tls_rejection(&err))
        }
    }
}

#[test]
fn each_mode_against_a_tls_only_server() {
    let ca = TestCa::new("encore test CA").unwrap();
    let pg = Postgres::start_tls(&ca).unwrap();
    let port = pg.port();
    let root = ca.root_path();
    let root = root.display();
    let ip = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let name = format!("postgres://postgres@localhost:{port}/postgres");

    // Without a root certificate, prefer (the default) and require encrypt, unchecked.
    assert!(encrypted(&ip));
    assert!(encrypted(&format!("{ip}?sslmode=require")));
    assert!(encrypted(&format!("{ip}?sslmode=allow")));
    // Plain text is refused by the server's rules.
    let (error, rejected) = refusal(&format!("{ip}?sslmode=disable"));
    assert!(error.contains("no encryption"), "{error}");
    assert!(!rejected, "a server's refusal is not a TLS rejection: {error}");

    // The certificate names 127.0.0.1 only: verify-full takes the IP, not "localhost".
    assert!(encrypted(&format!("{ip}?sslmode=verify-full&sslrootcert={root}")));
    let (error, rejected) = refusal(&format!("{name}?sslmode=verify-full&sslrootcert={root}"));
    assert!(error.contains("certificate not valid for name \"localhost\""), "{error}");
    assert!(rejected, "{error}");
    // verify-ca checks the chain only; so does require once a root certificate is given.
    assert!(encrypted(&format!("{name}?sslmode=verify-ca&sslrootcert={root}")));
    assert!(encrypted(&format!("host=localhost port={port} user=postgres sslmode=require sslrootcert='{root}'")));

    // A certificate from another CA fails every checking mode, and `require` once a root is given.
    let other = TestCa::new("another CA").unwrap();
    let other_root = other.root_path();
    for mode in ["verify-full", "verify-ca", "require", "prefer"] {
        let (error, rejected) = refusal(&format!("{ip}?sslmode={mode}&sslrootcert={}", other_root.display()));
        assert!(error.contains("UnknownIssuer"), "{mode}: {error}");
        assert!(rejected, "{mode}: {error}");
    }
}

#[test]
fn hostaddr_without_host_connects_unnamed_as_in_libpq() {
    let ca = TestCa::new("encore test CA").unwrap();
    let pg = Postgres::start_tls(&ca).unwrap();
    let root = ca.root_path();
    let addr = format!("hostaddr=127.0.0.1 port={} user=postgres dbname=postgres", pg.port());
    // tokio-postgres alone gives rustls an empty server name here and fails in every mode.
    assert!(encrypted(&addr));
    assert!(encrypted(&format!("{addr} sslmode=require")));
    assert!(encrypted(&format!("{addr} sslmode=verify-ca sslrootcert='{}'", root.display())));
    // The chain is still checked where the mode says so.
    let other = TestCa::new("another CA").unwrap();
    let (error, rejected) = refusal(&format!("{addr} sslmode=verify-ca sslrootcert='{}'", other.root_path().display()));
    assert!(error.contains("UnknownIssuer") && rejected, "{error}");
    // No name to check: verify-full is refused before connecting, and names what to add.
    let error = Target::parse_with_env(&format!("{addr} sslmode=verify-full sslrootcert='{}'", root.display()), no_env)
        .expect_err("verify-full without host");
    assert!(error.to_string().contains("needs host=NAME"), "{error}");
    // With both, the name is checked and the address connected to.
    assert!(encrypted(&format!("host=127.0.0.1 {addr} sslmode=verify-full sslrootcert='{}'", root.display())));
}

#[test]
fn a_client_certificate_logs_in_a_cert_role() {
    let ca = TestCa::new("encore test CA").unwrap();
    let pg = Postgres::start_tls(&ca).unwrap();
    let url = pg.add_cert_role().unwrap();
    let root = ca.root_path();
    let (cert, key) = ca.issue(ca.dir(), "client", CERT_ROLE, &[]).unwrap();
    let with_cert = format!("{url}?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}", root.display(), cert.display(), key.display());
    let mut client = target(&with_cert).connect().unwrap();
    let user: String = client.query_one("SELECT current_user::text", &[]).unwrap().get(0);
    assert_eq!(user, CERT_ROLE);

    let (error, _) = refusal(&format!("{url}?sslmode=verify-full&sslrootcert={}", root.display()));
    assert!(error.contains("certificate"), "{error}");
    // The environment is the fallback for every TLS key, as in libpq.
    let env = |variable: &str| match variable {
        "PGSSLMODE" => Some("verify-full".into()),
        "PGSSLROOTCERT" => Some(root.clone().into_os_string()),
        "PGSSLCERT" => Some(cert.clone().into_os_string()),
        "PGSSLKEY" => Some(key.clone().into_os_string()),
        _ => None,
    };
    let target = Target::parse_with_env(&url, env).unwrap();
    assert!(target.tls_summary().contains("host name checked"), "{}", target.tls_summary());
    target.connect().expect("connect with the environment's certificates");
}

#[test]
fn prefer_falls_back_to_plain_text_and_require_does_not() {
    let pg = Postgres::start().unwrap();
    assert!(!encrypted(&pg.url()));
    let (error, rejected) = refusal(&format!("{}?sslmode=require", pg.url()));
    assert!(error.contains("server does not support TLS"), "{error}");
    assert!(!rejected, "{error}");
}

#[test]
fn a_unix_socket_connects_whatever_the_mode_as_in_libpq() {
    let ca = TestCa::new("encore test CA").unwrap();
    let pg = Postgres::start_tls(&ca).unwrap();
    let socket = format!("host='{}' port={} user=postgres dbname=postgres", pg.socket_dir().display(), pg.port());
    for mode in ["prefer", "require", "verify-full"] {
        let mut client = target(&format!("{socket} sslmode={mode}")).connect().unwrap_or_else(|err| panic!("{mode}: {err:?}"));
        let over_tls: Option<bool> = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).unwrap().get(0);
        assert_eq!(over_tls, Some(false), "{mode}");
    }
}
