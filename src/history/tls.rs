//! TLS to PostgreSQL, with libpq's meanings of `sslmode` and `sslrootcert` in `history.url`.
//!
//! Managed PostgreSQL services refuse plain connections (RDS from PostgreSQL 15 on, Azure,
//! Cloud SQL when so configured), so the history connection speaks TLS whenever the server offers
//! it, as `psql` does:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | when the server offers it | not checked, unless `sslrootcert` is given (then as `verify-ca`) |
//! | `require` | always | not checked, unless `sslrootcert` is given (then as `verify-ca`) |
//! | `verify-ca` | always | issued by a certificate of `sslrootcert` |
//! | `verify-full` | always | issued by one of `sslrootcert`, and for the host in the URL |
//!
//! `sslrootcert` is a PEM file of trusted certificates, or `system` for the Mozilla roots built in.
//! tokio-postgres knows `disable`, `prefer` and `require` only: the verifying modes are taken out
//! of the URL here and passed on as `require` with a verifier.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::HistoryError;

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Not at all: the connection is encrypted, the server not authenticated (libpq's `require`).
    Nothing,
    /// Issued by a trusted certificate, for any name (`verify-ca`).
    Issuer,
    /// Issued by a trusted certificate, for the host connected to (`verify-full`).
    Full,
}

/// A `history.url` made ready for tokio-postgres, and the TLS connector it needs.
pub struct Target {
    /// The URL without `sslrootcert`, its `sslmode` one that tokio-postgres knows.
    pub url: String,
    /// The connector (used only when the connection is to be encrypted).
    pub tls: MakeRustlsConnect,
}

/// Reads `sslmode` and `sslrootcert` out of `url`. Errors never repeat the URL: it holds the
/// password.
pub fn target(url: &str) -> Result<Target, HistoryError> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut kept: Vec<String> = Vec::new();
    let mut mode: Option<String> = None;
    let mut root: Option<String> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => mode = Some(decode(value)),
            "sslrootcert" => root = Some(decode(value)),
            _ => kept.push(pair.to_owned()),
        }
    }
    let check = match (mode.as_deref(), root.is_some()) {
        (Some("verify-full"), _) => Check::Full,
        (Some("verify-ca"), _) => Check::Issuer,
        (_, true) => Check::Issuer,
        _ => Check::Nothing,
    };
    let sent_mode = mode.as_deref().map(|mode| match mode {
        "verify-full" | "verify-ca" => "require",
        other => other,
    });
    if let Some(mode) = sent_mode {
        if !matches!(mode, "disable" | "prefer" | "require") {
            return Err(HistoryError::Url(format!(
                "sslmode={mode} is not one of disable, prefer, require, verify-ca, verify-full"
            )));
        }
        kept.push(format!("sslmode={mode}"));
    }
    let roots = match (&root, check) {
        (_, Check::Nothing) => None,
        (Some(root), _) => Some(roots(root)?),
        (None, _) => {
            return Err(HistoryError::Url(
                "sslmode=verify-ca and verify-full need sslrootcert=PATH (a PEM file of the certificates to trust) or sslrootcert=system".into(),
            ));
        }
    };
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(Target {
        url,
        tls: MakeRustlsConnect::new(client_config(check, roots)?),
    })
}

/// `%XX` escapes decoded (a path in a URL may carry them).
fn decode(value: &str) -> String {
    percent_encoding::percent_decode_str(value)
        .decode_utf8_lossy()
        .into_owned()
}

/// The trusted certificates of `sslrootcert`.
fn roots(root: &str) -> Result<RootCertStore, HistoryError> {
    let mut store = RootCertStore::empty();
    if root == "system" {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(store);
    }
    let unreadable =
        |e: &dyn std::fmt::Display| HistoryError::Url(format!("sslrootcert {root}: {e}"));
    let certs = CertificateDer::pem_file_iter(root)
        .map_err(|e| unreadable(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(unreadable(&"no certificate in it"));
    }
    Ok(store)
}

fn client_config(
    check: Check,
    roots: Option<RootCertStore>,
) -> Result<rustls::ClientConfig, HistoryError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| HistoryError::Url(format!("TLS set-up: {e}")))?;
    let issuers = match (check, roots) {
        (Check::Nothing, _) | (_, None) => None,
        (_, Some(roots)) => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| HistoryError::Url(format!("sslrootcert: {e}")))?,
        ),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier {
            provider,
            issuers,
            names: check == Check::Full,
        }))
        .with_no_client_auth())
}

/// Checks the server's certificate as `sslmode` says. The handshake's signatures are checked in
/// every mode (the session is with whoever holds the certificate's key); `require` without
/// `sslrootcert` accepts any certificate, `verify-ca` one a trusted certificate issued for any
/// name, `verify-full` one issued for the host connected to.
#[derive(Debug)]
struct Verifier {
    /// The signature algorithms.
    provider: Arc<CryptoProvider>,
    /// The trusted issuers; `None`: the certificate is not checked.
    issuers: Option<Arc<WebPkiServerVerifier>>,
    /// Whether the certificate must be for the host.
    names: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(issuers) = &self.issuers else {
            return Ok(ServerCertVerified::assertion());
        };
        match issuers.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_of(url: &str) -> String {
        match target(url) {
            Ok(t) => t.url,
            Err(e) => panic!("{url}: {e}"),
        }
    }

    fn error_of(url: &str) -> String {
        match target(url) {
            Ok(t) => panic!("{url} was taken: {}", t.url),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn libpq_modes_become_ones_tokio_postgres_knows_and_the_password_never_shows() {
        let base = "postgres://u:s3cret@db:5432/h";
        assert_eq!(url_of(base), base);
        assert_eq!(
            url_of(&format!("{base}?options=-c%20search_path%3Dx")),
            format!("{base}?options=-c%20search_path%3Dx")
        );
        assert_eq!(
            url_of(&format!("{base}?sslmode=require")),
            format!("{base}?sslmode=require")
        );
        assert_eq!(
            url_of(&format!(
                "{base}?sslmode=verify-full&sslrootcert=system&connect_timeout=5"
            )),
            format!("{base}?connect_timeout=5&sslmode=require")
        );
        for bad in [
            format!("{base}?sslmode=verify-full"),
            format!("{base}?sslmode=verify-ca"),
            format!("{base}?sslmode=sometimes"),
            format!("{base}?sslmode=require&sslrootcert=/nonexistent/root.crt"),
        ] {
            let e = error_of(&bad);
            assert!(e.contains("history.url"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
        assert!(error_of(&format!("{base}?sslmode=verify-ca")).contains("sslrootcert"));
        assert!(
            error_of(&format!("{base}?sslrootcert=%2Fnonexistent%2Froot.crt"))
                .contains("/nonexistent/root.crt")
        );
    }
}
