//! The operator's PKI: a CA that signs the server certificate and every client certificate.
//! Client certificates are only half of authentication: the server also requires the
//! certificate's SHA-256 to be registered to an active principal (`domain::principals`).
//!
//! Layout under `<data>/pki/`: `ca.pem`, `ca.key` (0600), `server.pem`, `server.key` (0600).

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest as _, Sha256};
use time::{Duration, OffsetDateTime};

use crate::model::{IssuedCertificate, Role};

/// How long a CA certificate is valid. The operator re-keys long before this.
const CA_VALIDITY: Duration = Duration::days(10 * 365);
/// How long a server or client certificate is valid; `rotate-cert` issues a new one.
const LEAF_VALIDITY: Duration = Duration::days(2 * 365);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("no PKI at {0} (run `flagshare init` first)")]
    Missing(PathBuf),
    #[error("a PKI already exists at {0}")]
    Exists(PathBuf),
    #[error("the CA key is not in {0} (kept offline?): put ca.key back to issue certificates, then take it away again")]
    CaKeyOffline(PathBuf),
}

/// The files a server needs to run TLS and issue client certificates.
pub struct Pki {
    pub ca_pem: String,
    /// Where `ca.key` is read from when a certificate is issued: the operator may keep it
    /// offline, and the server runs without it (only issuing fails until it is back).
    dir: PathBuf,
    pub server_pem: String,
    pub server_key_pem: String,
}

/// SHA-256 of a certificate's DER: how a certificate maps to a principal.
pub fn certificate_sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// SHA-256 of the first certificate in a PEM text.
pub fn pem_certificate_sha256(pem_text: &str) -> Result<[u8; 32], PkiError> {
    let der = CertificateDer::from_pem_slice(pem_text.as_bytes())
        .map_err(|_| PkiError::Certificate(rcgen::Error::CouldNotParseCertificate))?;
    Ok(certificate_sha256(&der))
}

/// When the first certificate of a PEM text stops being valid, as Unix seconds.
pub fn certificate_not_after(pem_text: &str) -> Option<i64> {
    let der = CertificateDer::from_pem_slice(pem_text.as_bytes()).ok()?;
    let (_, certificate) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(certificate.validity().not_after.timestamp())
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file; `private` files get mode 0600 and are never overwritten.
pub fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let write_error = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    if private {
        let mut file = crate::util::create_private_file(path).map_err(write_error)?;
        file.write_all(contents.as_bytes()).map_err(write_error)
    } else {
        std::fs::write(path, contents).map_err(write_error)
    }
}

fn validity(params: &mut CertificateParams, length: Duration) {
    let now = OffsetDateTime::now_utc();
    // Backdated a little so a client whose clock lags does not reject a fresh certificate.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + length;
}

fn ca_params(operator: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, operator);
    name.push(DnType::CommonName, format!("{operator} flagshare CA"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_VALIDITY);
    params
}

fn server_params(operator: &str, host_names: &[String]) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(host_names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{operator} flagshare server"));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, LEAF_VALIDITY);
    Ok(params)
}

/// Marks a server certificate renewal whose new files are complete: `Pki::load` finishes
/// renaming them after a crash. Without it, stray new files are half-written and dropped.
const RENEWAL_MARKER: &str = "server.renewing";
const SERVER_FILES: [&str; 2] = ["server.key", "server.pem"];

fn rename(from: &Path, to: &Path) -> Result<(), PkiError> {
    std::fs::rename(from, to).map_err(|source| PkiError::Write {
        path: to.to_owned(),
        source,
    })
}

/// Completes (or discards) a server certificate renewal a crash interrupted.
fn finish_renewal(dir: &Path) -> Result<(), PkiError> {
    let complete = dir.join(RENEWAL_MARKER).exists();
    for name in SERVER_FILES {
        let fresh = dir.join(format!("{name}.new"));
        if fresh.exists() {
            if complete {
                rename(&fresh, &dir.join(name))?;
            } else {
                let _ = std::fs::remove_file(&fresh);
            }
        }
    }
    let _ = std::fs::remove_file(dir.join(RENEWAL_MARKER));
    Ok(())
}

impl Pki {
    /// Issues a new server certificate (and key) for `host_names` from the CA, valid for 2
    /// years, and writes it over `server.pem` and `server.key`. Returns (certificate PEM,
    /// key PEM). Needs the CA key.
    pub fn renew_server_certificate(
        &self,
        operator: &str,
        host_names: &[String],
    ) -> Result<(String, String), PkiError> {
        let issuer = self.ca_issuer()?;
        let server_key = KeyPair::generate()?;
        let server_cert = server_params(operator, host_names)?.signed_by(&server_key, &issuer)?;
        let (cert_pem, key_pem) = (server_cert.pem(), server_key.serialize_pem());
        // Both new files are written whole, then marked complete, then renamed over the
        // old ones: a crash at any point leaves the old pair or (after `Pki::load`) the
        // new one, never one of each.
        finish_renewal(&self.dir)?;
        write_file(&self.dir.join("server.key.new"), &key_pem, true)?;
        write_file(&self.dir.join("server.pem.new"), &cert_pem, false)?;
        write_file(&self.dir.join(RENEWAL_MARKER), "", false)?;
        finish_renewal(&self.dir)?;
        Ok((cert_pem, key_pem))
    }

    /// The CA as issuer, its key read afresh: a key taken offline after start is refused,
    /// and one put back works.
    fn ca_issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let ca_key_path = self.dir.join("ca.key");
        if !ca_key_path.exists() {
            return Err(PkiError::CaKeyOffline(self.dir.clone()));
        }
        let ca_key = KeyPair::from_pem(&read(&ca_key_path)?)?;
        Ok(Issuer::from_ca_cert_pem(&self.ca_pem, ca_key)?)
    }

    pub fn dir(data_dir: &Path) -> PathBuf {
        data_dir.join("pki")
    }

    pub fn exists(data_dir: &Path) -> bool {
        Pki::dir(data_dir).join("ca.pem").exists()
    }

    /// Creates a CA and a server certificate valid for `host_names` (DNS names or IP
    /// addresses) and writes them under `<data_dir>/pki`.
    pub fn create(data_dir: &Path, operator: &str, host_names: &[String]) -> Result<Pki, PkiError> {
        let dir = Pki::dir(data_dir);
        if dir.join("ca.pem").exists() {
            return Err(PkiError::Exists(dir));
        }
        crate::util::create_private_dir(&dir).map_err(|source| PkiError::Write {
            path: dir.clone(),
            source,
        })?;
        let ca_key = KeyPair::generate()?;
        let ca_params = ca_params(operator);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);

        let server_key = KeyPair::generate()?;
        let server_cert = server_params(operator, host_names)?.signed_by(&server_key, &issuer)?;

        let ca_key_pem = ca_key.serialize_pem();
        let pki = Pki {
            ca_pem: ca_cert.pem(),
            dir: dir.clone(),
            server_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        };
        write_file(&dir.join("ca.key"), &ca_key_pem, true)?;
        write_file(&dir.join("server.key"), &pki.server_key_pem, true)?;
        write_file(&dir.join("server.pem"), &pki.server_pem, false)?;
        // Written last: its presence marks a complete PKI.
        write_file(&dir.join("ca.pem"), &pki.ca_pem, false)?;
        Ok(pki)
    }

    pub fn load(data_dir: &Path) -> Result<Pki, PkiError> {
        let dir = Pki::dir(data_dir);
        if !dir.join("ca.pem").exists() {
            return Err(PkiError::Missing(dir));
        }
        finish_renewal(&dir)?;
        Ok(Pki {
            ca_pem: read(&dir.join("ca.pem"))?,
            server_pem: read(&dir.join("server.pem"))?,
            server_key_pem: read(&dir.join("server.key"))?,
            dir,
        })
    }

    /// Signs a server certificate for `host_names` over the given public key
    /// (SubjectPublicKeyInfo DER): a new node's, whose key is made where it will run.
    pub fn issue_server_certificate(
        &self,
        operator: &str,
        host_names: &[String],
        public_key_der: &[u8],
    ) -> Result<String, PkiError> {
        let issuer = self.ca_issuer()?;
        let public_key = SubjectPublicKeyInfo::from_der(public_key_der)?;
        Ok(server_params(operator, host_names)?
            .signed_by(&public_key, &issuer)?
            .pem())
    }

    /// Signs a client certificate for `name` over the given public key (SubjectPublicKeyInfo
    /// DER). Returns the certificate's PEM and its SHA-256.
    pub fn issue_client_certificate(
        &self,
        name: &str,
        role: Role,
        public_key_der: &[u8],
    ) -> Result<(String, IssuedCertificate), PkiError> {
        let issuer = self.ca_issuer()?;
        let public_key = SubjectPublicKeyInfo::from_der(public_key_der)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, LEAF_VALIDITY);
        let not_after_ms = params.not_after.unix_timestamp().saturating_mul(1000);
        let cert = params.signed_by(&public_key, &issuer)?;
        Ok((
            cert.pem(),
            IssuedCertificate {
                sha256: certificate_sha256(cert.der()),
                not_after_ms,
            },
        ))
    }
}

/// A new client key pair, made where its bundle is written.
pub fn generate_client_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate()?)
}
