//! A throwaway certificate authority for TLS tests: a CA and the server and client
//! certificates it signs, as PEM files in a temporary directory removed on drop.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tempfile::TempDir;

use crate::{Error, Result};

/// A certificate authority that exists only for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    dir: TempDir,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("dir", &self.dir.path()).finish()
    }
}

impl TestCa {
    /// A new CA named `name`; its certificate is [`root_path`](Self::root_path).
    pub fn new(name: &str) -> Result<TestCa> {
        let dir = tempfile::Builder::new().prefix("encore-ca-").tempdir().map_err(|source| Error::Io {
            action: "creating a temporary directory in",
            path: std::env::temp_dir(),
            source,
        })?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let certificate = params.self_signed(&key)?;
        write(&dir.path().join("ca.pem"), &certificate.pem())?;
        Ok(TestCa { issuer: Issuer::new(params, key), dir })
    }

    /// The CA's certificate (PEM): what a client trusts as `sslrootcert`.
    pub fn root_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues a certificate with common name `common_name`, valid for `names` (host names or
    /// IP addresses; none for a client certificate), and writes `<stem>.crt` and `<stem>.key`
    /// into `dir` (the key readable by its owner only, as Postgres and libpq demand).
    pub fn issue(&self, dir: &Path, stem: &str, common_name: &str, names: &[&str]) -> Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.iter().map(|name| name.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        let certificate = params.signed_by(&key, &self.issuer)?;
        let (cert_path, key_path) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
        write(&cert_path, &certificate.pem())?;
        write(&key_path, &key.serialize_pem())?;
        set_owner_only(&key_path)?;
        Ok((cert_path, key_path))
    }

    /// The directory the CA's files live in (for client certificates of a test).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).map_err(|source| Error::Io { action: "writing", path: path.to_path_buf(), source })
}

pub(crate) fn set_owner_only(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| Error::Io {
        action: "restricting permissions of",
        path: path.to_path_buf(),
        source,
    })
}
