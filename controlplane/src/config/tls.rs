//! `[tls]`: the certificate, key and CA files, read and checked when the config is validated (so
//! `fsroute check` and a SIGHUP name a bad or mismatched file, and a reload that cannot read them
//! keeps the running certificate), and turned into the rustls configs the routing table carries
//! to the shards (docs/TCP.md, "TLS"). rustls with the ring provider; no system trust store: TLS
//! destinations are verified against `ca` only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use fsroute_dataplane::tls::TlsContexts;

/// `[tls] verify_client`: what a `tls:` listener asks of a caller's certificate when
/// `client_ca` is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VerifyClient {
    /// A caller must present a certificate that `client_ca` signed (mutual TLS with a trunk).
    #[default]
    Require,
    /// A caller may present none; one it presents must verify.
    Optional,
}

impl VerifyClient {
    pub fn from_name(s: &str) -> Option<VerifyClient> {
        match s {
            "require" => Some(VerifyClient::Require),
            "optional" => Some(VerifyClient::Optional),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            VerifyClient::Require => "require",
            VerifyClient::Optional => "optional",
        }
    }
}

/// A validated `[tls]`: the files as written and what was built from them at validation.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first) and its private key; both or neither.
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    /// PEM bundle of the CAs a caller's certificate must chain to; None: no client certificates.
    pub client_ca: Option<PathBuf>,
    pub verify_client: VerifyClient,
    /// PEM bundle TLS destinations' certificates are verified against; None: no TLS destination.
    pub ca: Option<PathBuf>,
    /// The leaf certificate's subject and expiry, for `fsroute check`.
    pub certificate_info: Option<CertificateInfo>,
    /// What the table hands the shards.
    pub contexts: TlsContexts,
}

/// What `fsroute check` shows of the leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject's common name, when it has one.
    pub subject_cn: Option<String>,
    /// notAfter as the certificate writes it (`YYMMDDHHMMSSZ` or `YYYYMMDDHHMMSSZ`), shown as
    /// `YYYY-MM-DD HH:MM:SS UTC`.
    pub not_after: Option<String>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of PEM file `path`; Err: the sentence for the field's error.
pub(crate) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    match certs {
        Err(e) => Err(format!("{} is not a readable PEM file: {e}", path.display())),
        Ok(c) if c.is_empty() => Err(format!("{} holds no PEM CERTIFICATE", path.display())),
        Ok(c) => Ok(c),
    }
}

/// The private key of PEM file `path` (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| format!("{} holds no usable PEM private key: {e}", path.display()))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    for cert in read_certificates(path)? {
        store.add(cert).map_err(|e| format!("{}: a certificate that cannot be a trust anchor: {e}", path.display()))?;
    }
    Ok(Arc::new(store))
}

/// Which field a [`build`] error belongs to, and why.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TlsFileError {
    pub field: &'static str,
    pub reason: String,
}

fn err(field: &'static str) -> impl Fn(String) -> TlsFileError {
    move |reason| TlsFileError { field, reason }
}

/// Reads the files and builds the configs: a server config when there is a certificate (with
/// client verification when `client_ca` is set), a client config when there is a `ca` (presenting
/// the certificate as fsroute's client certificate when there is one).
pub(crate) fn build(
    certificate: Option<&Path>,
    private_key: Option<&Path>,
    client_ca: Option<&Path>,
    verify_client: VerifyClient,
    ca: Option<&Path>,
) -> Result<(TlsContexts, Option<CertificateInfo>), TlsFileError> {
    let pair = match (certificate, private_key) {
        (Some(c), Some(k)) => {
            let chain = read_certificates(c).map_err(err("tls.certificate"))?;
            let key = read_private_key(k).map_err(err("tls.private_key"))?;
            Some((c, chain, key))
        }
        _ => None,
    };
    let info = pair.as_ref().map(|(_, chain, _)| certificate_info(&chain[0]));
    let server = match &pair {
        None => None,
        Some((path, chain, key)) => {
            let builder = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| err("tls.certificate")(e.to_string()))?;
            let builder = match client_ca {
                None => builder.with_no_client_auth(),
                Some(ca_path) => {
                    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_path).map_err(err("tls.client_ca"))?, provider());
                    let verifier = match verify_client {
                        VerifyClient::Require => verifier,
                        VerifyClient::Optional => verifier.allow_unauthenticated(),
                    };
                    builder.with_client_cert_verifier(
                        verifier.build().map_err(|e| err("tls.client_ca")(format!("{}: {e}", ca_path.display())))?,
                    )
                }
            };
            let config = builder.with_single_cert(chain.clone(), key.clone_key()).map_err(|e| {
                let why = match e {
                    rustls::Error::InconsistentKeys(_) => format!("{} does not match tls.private_key", path.display()),
                    e => format!("{}: {e}", path.display()),
                };
                err("tls.certificate")(why)
            })?;
            Some(Arc::new(config))
        }
    };
    let client = match ca {
        None => None,
        Some(ca_path) => {
            let builder = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| err("tls.ca")(e.to_string()))?
                .with_root_certificates(roots(ca_path).map_err(err("tls.ca"))?);
            let config = match &pair {
                Some((path, chain, key)) => builder
                    .with_client_auth_cert(chain.clone(), key.clone_key())
                    .map_err(|e| err("tls.certificate")(format!("{}: {e}", path.display())))?,
                None => builder.with_no_client_auth(),
            };
            Some(Arc::new(config))
        }
    };
    Ok((TlsContexts { server, client }, info))
}

/// The subject CN and notAfter of a DER certificate, read with a minimal DER walk (the fields
/// are at fixed places in a TBSCertificate); None for what cannot be found.
pub(crate) fn certificate_info(cert: &CertificateDer<'_>) -> CertificateInfo {
    let mut info = CertificateInfo { subject_cn: None, not_after: None };
    let Some(tbs) = der_seq(cert.as_ref()).and_then(|c| der_seq(c)) else { return info };
    let mut rest = tbs;
    let mut fields = Vec::new();
    while let Some((tag, body, after)) = der_next(rest) {
        fields.push((tag, body));
        rest = after;
    }
    // [0] version is optional: serial, signature, issuer, validity, subject follow it.
    let skip = usize::from(fields.first().is_some_and(|(t, _)| *t == 0xa0));
    if let Some((0x30, validity)) = fields.get(skip + 3) {
        if let Some((_, _, after)) = der_next(validity) {
            if let Some((tag, time, _)) = der_next(after) {
                info.not_after = format_time(tag, time);
            }
        }
    }
    if let Some((0x30, subject)) = fields.get(skip + 4) {
        info.subject_cn = common_name(subject);
    }
    info
}

/// The body of the DER SEQUENCE `data` starts with.
fn der_seq(data: &[u8]) -> Option<&[u8]> {
    match der_next(data)? {
        (0x30, body, _) => Some(body),
        _ => None,
    }
}

/// The first DER element of `data`: its tag, its body and what follows it.
fn der_next(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |a, &b| a << 8 | usize::from(b)), &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The CN (2.5.4.3) of a Name's body.
fn common_name(mut name: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    while let Some((_, set, after)) = der_next(name) {
        if let Some((0x30, atv, _)) = der_next(set) {
            if let Some((0x06, oid, value)) = der_next(atv) {
                if oid == CN {
                    let (_, text, _) = der_next(value)?;
                    return String::from_utf8(text.to_vec()).ok();
                }
            }
        }
        name = after;
    }
    None
}

/// UTCTime (0x17) or GeneralizedTime (0x18) as `YYYY-MM-DD HH:MM:SS UTC`.
fn format_time(tag: u8, t: &[u8]) -> Option<String> {
    let t = std::str::from_utf8(t).ok()?;
    let full = match tag {
        // RFC 5280: a two-digit year below 50 is 20YY.
        0x17 if t.len() >= 12 => format!("{}{t}", if t[..2].parse::<u8>().ok()? < 50 { "20" } else { "19" }),
        0x18 if t.len() >= 14 => t.to_string(),
        _ => return None,
    };
    let d = full.as_bytes();
    if !d[..14].iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(format!("{}-{}-{} {}:{}:{} UTC", &full[..4], &full[4..6], &full[6..8], &full[8..10], &full[10..12], &full[12..14]))
}
