//! TLS to PostgreSQL: libpq's `sslmode` values, as the platform's Go webhooks service takes them
//! (`MF_WEBHOOKS_DB_SSL_MODE` and its three certificate files), and the rustls settings each
//! one means.
//!
//! libpq's meanings are kept: `prefer` and `require` encrypt without checking who answers
//! (unless a root certificate is given, which makes `require` check the chain, as libpq does);
//! `verify-ca` checks the chain against the roots; `verify-full` also checks that the
//! certificate names the host connected to. The roots are the given file, else the web PKI.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// No TLS.
    #[default]
    Disable,
    /// TLS when the server offers it, unverified; plain otherwise (libpq's `allow` too).
    Prefer,
    /// TLS always; unverified unless a root certificate is given.
    Require,
    /// TLS always, the server's chain checked against the roots.
    VerifyCa,
    /// TLS always, the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    /// Parses libpq's names.
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "{other:?} is not an SSL mode; use disable, allow, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }

    /// The mode tokio-postgres negotiates with: it knows whether to try TLS, not how to check it.
    pub fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// How the store's connections to PostgreSQL use TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Whether to use TLS and what to check; `None`: as the URL's own `sslmode` says
    /// (`disable`, `prefer` or `require`, libpq's default `prefer` when it says nothing),
    /// without checking the server.
    pub mode: Option<SslMode>,
    /// PEM file of the CA certificates to check the server with; unset: the web PKI roots.
    pub root_cert: Option<PathBuf>,
    /// PEM file of the client certificate chain, for servers that ask for one.
    pub client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub client_key: Option<PathBuf>,
}

/// Which setting a TLS failure is about, for start-up errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFault {
    /// The file's role: `root`, `client certificate` or `client key`.
    pub setting: &'static str,
    /// What is wrong.
    pub message: String,
}

impl TlsSettings {
    /// The connector tokio-postgres uses: rustls on ring with the checks of the mode.
    pub fn connector(&self) -> Result<MakeRustlsConnect, TlsFault> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = self.roots()?;
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| fault("root", e.to_string()))?;
        let checked = |check_name: bool| -> Result<Arc<dyn ServerCertVerifier>, TlsFault> {
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots.clone()), provider.clone())
                .build()
                .map_err(|e| fault("root", e.to_string()))?;
            Ok(if check_name {
                verifier
            } else {
                Arc::new(ChainOnly(verifier))
            })
        };
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode.unwrap_or_default() {
            SslMode::VerifyFull => checked(true)?,
            SslMode::VerifyCa => checked(false)?,
            SslMode::Require if self.root_cert.is_some() => checked(false)?,
            SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(Unchecked(provider.clone())),
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        let config = match (&self.client_cert, &self.client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| fault("client certificate", format!("{}: {e}", cert.display())))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| fault("client key", format!("{}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| fault("client certificate", e.to_string()))?
            }
            (Some(_), None) => return Err(fault("client key", "is required with the client certificate".into())),
            (None, Some(_)) => return Err(fault("client certificate", "is required with the client key".into())),
        };
        Ok(MakeRustlsConnect::new(config))
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsFault> {
        let Some(path) = &self.root_cert else {
            return Ok(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            });
        };
        let mut roots = rustls::RootCertStore::empty();
        let certificates = CertificateDer::pem_file_iter(path)
            .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
            .map_err(|e| fault("root", format!("{}: {e}", path.display())))?;
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|e| fault("root", format!("{}: {e}", path.display())))?;
        }
        if roots.is_empty() {
            return Err(fault("root", format!("{}: holds no certificate", path.display())));
        }
        Ok(roots)
    }
}

fn fault(setting: &'static str, message: String) -> TlsFault {
    TlsFault { setting, message }
}

/// `verify-ca`: the chain is checked, the name it is for is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without roots: encrypted, whoever answers (libpq's meaning). The
/// handshake's signatures are still checked, so the session is with the certificate's key.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_mode_names_parse_and_map_to_what_tokio_postgres_negotiates() {
        use tokio_postgres::config::SslMode as Negotiated;
        for (name, mode, negotiated) in [
            ("disable", SslMode::Disable, Negotiated::Disable),
            ("allow", SslMode::Prefer, Negotiated::Prefer),
            ("prefer", SslMode::Prefer, Negotiated::Prefer),
            ("require", SslMode::Require, Negotiated::Require),
            ("verify-ca", SslMode::VerifyCa, Negotiated::Require),
            ("verify-full", SslMode::VerifyFull, Negotiated::Require),
        ] {
            assert_eq!(SslMode::parse(name), Ok(mode));
            assert_eq!(mode.negotiation(), negotiated);
        }
        assert!(SslMode::parse("on").unwrap_err().contains("verify-full"));
    }

    #[test]
    fn a_client_certificate_without_its_key_or_an_unreadable_root_is_refused_naming_it() {
        let settings = TlsSettings {
            mode: Some(SslMode::VerifyFull),
            client_cert: Some("/nonexistent/client.pem".into()),
            ..TlsSettings::default()
        };
        assert_eq!(settings.connector().err().map(|f| f.setting), Some("client key"));
        let settings = TlsSettings {
            mode: Some(SslMode::VerifyCa),
            root_cert: Some("/nonexistent/ca.pem".into()),
            ..TlsSettings::default()
        };
        assert_eq!(settings.connector().err().map(|f| f.setting), Some("root"));
        assert!(TlsSettings::default().connector().is_ok());
    }
}
