//! Throwaway certificate authorities for demos, dev clusters and tests
//! (docs/design.md, "Security"): a CA made on the spot, and certificates it issues
//! with `ratify://<role>/<name>` names, all written as PEM files into a folder.
//!
//! Every certificate names `localhost`, `127.0.0.1` and `::1`, so it serves and
//! dials on loopback. Production certificates come from the operator's own CA
//! (README, "Security").

use std::path::{Path, PathBuf};

use ratify_common::tls::{Role, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters.
    #[error("certificate: {0}")]
    Make(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A CA whose key lives in memory (and in `dir/ca.key` for `ratify-dev`'s users).
pub struct Ca {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("dir", &self.dir).finish()
    }
}

fn write(path: &Path, text: &str) -> Result<(), CertError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| CertError::Write {
            path: path.to_path_buf(),
            source,
        })
}

impl Ca {
    /// Makes a CA named `name` and writes its certificate to `dir/ca.pem` (the folder
    /// is created).
    pub fn new(dir: &Path, name: &str) -> Result<Self, CertError> {
        std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write(&dir.join("ca.pem"), &cert.pem())?;
        write(&dir.join("ca.key"), &key.serialize_pem())?;
        Ok(Self {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a certificate for `names` (each a role and the name it is granted to)
    /// and writes `dir/<stem>.pem` and `dir/<stem>.key`, replacing what was there
    /// (each file is renamed into place, the key first, so a reader sees a whole
    /// file).
    pub fn issue(&self, stem: &str, names: &[(Role, &str)]) -> Result<TlsFiles, CertError> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        for (role, name) in names {
            params
                .subject_alt_names
                .push(SanType::URI(role.uri(name).try_into()?));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, stem);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = TlsFiles {
            ca: self.ca_file(),
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        write(&files.key, &key.serialize_pem())?;
        write(&files.cert, &cert.pem())?;
        Ok(files)
    }
}
