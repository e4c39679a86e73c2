//! TLS for every connection the client opens (the pool's and the LISTEN
//! connection), configured as libpq is: by `sslmode` and `sslrootcert` in
//! the connection string.
//!
//! tokio-postgres parses `sslmode` disable, prefer and require only, and no
//! `sslrootcert`; so both are taken out of the string here, the rest goes to
//! tokio-postgres, and the certificate check is this module's rustls
//! verifier:
//!
//! | sslmode     | TLS                        | certificate checked            |
//! |-------------|----------------------------|--------------------------------|
//! | disable     | never                      | -                              |
//! | allow, prefer (default) | if the server offers it | chain, if a root cert is there |
//! | require     | always                     | chain, if a root cert is there |
//! | verify-ca   | always                     | chain to the root cert         |
//! | verify-full | always                     | chain, and the host name       |
//!
//! "A root cert is there": `sslrootcert` names one, or the libpq default
//! `~/.postgresql/root.crt` exists. `sslrootcert=system` means the system's
//! trusted roots and, as in libpq, needs verify-full (its default then).
//! Unlike libpq, an `sslrootcert` named outright must be readable in every
//! mode: whoever names a CA file expects it to be checked against.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::{Host, SslMode};
pub(crate) use tokio_postgres_rustls::MakeRustlsConnect;

use crate::Error;

/// A connection string made ready to connect with: tokio-postgres's
/// settings and the TLS connector its sslmode calls for.
pub(crate) fn configure(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect), Error> {
    let (rest, ssl) = take_ssl_params(url);
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| Error::Config(e.to_string()))?;
    let (mode, check) = settings(&ssl)?;
    // libpq ignores sslmode on Unix sockets (the server offers no TLS there).
    let sockets_only = !config.get_hosts().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|h| !matches!(h, Host::Tcp(_)));
    config.ssl_mode(if sockets_only { SslMode::Disable } else { mode });
    Ok((config, connector(check)?))
}

/// `sslmode` and `sslrootcert` as written in the connection string.
#[derive(Debug, Default, PartialEq)]
struct SslParams {
    mode: Option<String>,
    root_cert: Option<String>,
}

/// How the server's certificate is checked.
enum Check {
    /// Not at all: encryption without authentication (libpq's require).
    Nothing,
    /// It must chain to one of these roots.
    Chain(RootCertStore),
    /// It must chain to one of these roots and name the host connected to.
    ChainAndHost(RootCertStore),
}

/// The sslmode tokio-postgres is to use, and the certificate check.
fn settings(ssl: &SslParams) -> Result<(SslMode, Check), Error> {
    let system = ssl.root_cert.as_deref() == Some("system");
    let default_mode = if system { "verify-full" } else { "prefer" };
    let mode = ssl.mode.as_deref().unwrap_or(default_mode);
    if system && mode != "verify-full" {
        return Err(Error::SslMode(format!(
            "sslmode={mode} may not be used with sslrootcert=system (use verify-full)"
        )));
    }
    let roots = |required: bool| -> Result<Option<RootCertStore>, Error> {
        match ssl.root_cert.as_deref() {
            Some("system") => system_roots().map(Some),
            Some(path) => load_roots(Path::new(path)).map(Some),
            None => match default_root_cert() {
                Some(path) if path.exists() => load_roots(&path).map(Some),
                path if required => Err(Error::SslRootCert {
                    path: path.map_or("~/.postgresql/root.crt".into(), |p| p.display().to_string()),
                    reason: format!(
                        "does not exist; sslmode={mode} checks the server's certificate \
                         against it: give its CA in sslrootcert, or sslrootcert=system"
                    ),
                }),
                _ => Ok(None),
            },
        }
    };
    let chain_if_any = |roots: Option<RootCertStore>| roots.map_or(Check::Nothing, Check::Chain);
    Ok(match mode {
        "disable" => (SslMode::Disable, Check::Nothing),
        // allow prefers no TLS, which tokio-postgres cannot do: encrypting
        // whenever the server offers it never connects where allow would not.
        "allow" | "prefer" => (SslMode::Prefer, chain_if_any(roots(false)?)),
        "require" => (SslMode::Require, chain_if_any(roots(false)?)),
        "verify-ca" => (
            SslMode::Require,
            Check::Chain(roots(true)?.unwrap_or_else(RootCertStore::empty)),
        ),
        "verify-full" => (
            SslMode::Require,
            Check::ChainAndHost(roots(true)?.unwrap_or_else(RootCertStore::empty)),
        ),
        other => {
            return Err(Error::SslMode(format!(
                "{other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )))
        }
    })
}

/// libpq's default root certificate file.
fn default_root_cert() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".postgresql/root.crt"))
}

/// The CA certificates of a PEM file.
fn load_roots(path: &Path) -> Result<RootCertStore, Error> {
    let error = |reason: String| Error::SslRootCert {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("not a PEM certificate file: {e}")))?;
    let mut roots = RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(error("holds no usable CA certificate".into()));
    }
    Ok(roots)
}

/// The operating system's trusted roots (`sslrootcert=system`).
fn system_roots() -> Result<RootCertStore, Error> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let reason = match found.errors.first() {
            Some(e) => format!("no system root certificate could be loaded: {e}"),
            None => "the system has no root certificates".into(),
        };
        return Err(Error::SslRootCert {
            path: "system".into(),
            reason,
        });
    }
    Ok(roots)
}

/// A rustls connector that checks certificates as `check` says. The crypto
/// provider is named here rather than taken from the process default, which
/// an application may have left unset.
fn connector(check: Check) -> Result<MakeRustlsConnect, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (roots, check_host) = match check {
        Check::Nothing => (None, false),
        Check::Chain(roots) => (Some(roots), false),
        Check::ChainAndHost(roots) => (Some(roots), true),
    };
    let verifier = Verifier {
        roots,
        check_host,
        provider: provider.clone(),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// One verifier for every sslmode, so that the three checks differ only in
/// the two steps below. The handshake's signatures are always verified:
/// even unauthenticated, the session key belongs to the certificate's key.
#[derive(Debug)]
struct Verifier {
    roots: Option<RootCertStore>,
    check_host: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        let algorithms = self.provider.signature_verification_algorithms.all;
        verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, algorithms)?;
        if self.check_host {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Take `sslmode` and `sslrootcert` out of a key=value string or a URL,
/// parsing as tokio-postgres does (and libpq: the last setting wins). A
/// string that does not parse is handed on whole, for tokio-postgres to
/// name what is wrong with it.
fn take_ssl_params(url: &str) -> (String, SslParams) {
    let mut ssl = SslParams::default();
    let mut keep = |key: &str, value: String| match key {
        "sslmode" => {
            ssl.mode = Some(value);
            false
        }
        "sslrootcert" => {
            ssl.root_cert = Some(value);
            false
        }
        _ => true,
    };
    let rest = match ["postgres://", "postgresql://"]
        .iter()
        .find(|p| url.starts_with(*p))
    {
        Some(prefix) => take_from_url(url, prefix.len(), &mut keep),
        None => take_from_key_values(url, &mut keep),
    };
    (rest, ssl)
}

/// URL form: the parameters after the first `?` that follows the
/// credentials, `&`-separated, percent-encoded.
fn take_from_url(url: &str, prefix: usize, keep: &mut impl FnMut(&str, String) -> bool) -> String {
    let after_credentials = url[prefix..].find('@').map_or(prefix, |at| prefix + at);
    let Some(q) = url[after_credentials..].find('?') else {
        return url.to_string();
    };
    let (head, query) = url.split_at(after_credentials + q + 1);
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|param| match param.split_once('=') {
            Some((key, value)) => keep(&decode(key), decode(value)),
            None => true,
        })
        .collect();
    let mut rest = format!("{head}{}", kept.join("&"));
    if kept.is_empty() {
        rest.pop(); // the `?` with nothing after it
    }
    rest
}

/// key=value form: `key = value` pairs separated by blanks; a value is
/// either bare (up to the next blank) or in single quotes, and a backslash
/// escapes the next character in both.
fn take_from_key_values(s: &str, keep: &mut impl FnMut(&str, String) -> bool) -> String {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut rest = String::with_capacity(s.len());
    let skip_blanks = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        let start = skip_blanks(i);
        if start == bytes.len() {
            return rest;
        }
        let mut j = start;
        while j < bytes.len() && !bytes[j].is_ascii_whitespace() && bytes[j] != b'=' {
            j += 1;
        }
        let key = &s[start..j];
        j = skip_blanks(j);
        if key.is_empty() || bytes.get(j) != Some(&b'=') {
            return s.to_string();
        }
        j = skip_blanks(j + 1);
        let quoted = bytes.get(j) == Some(&b'\'');
        if quoted {
            j += 1;
        }
        let mut value = String::new();
        loop {
            let Some(c) = s[j..].chars().next() else {
                if quoted {
                    return s.to_string(); // unterminated quote
                }
                break;
            };
            if (quoted && c == '\'') || (!quoted && c.is_whitespace()) {
                break;
            }
            j += c.len_utf8();
            if c == '\\' {
                if let Some(escaped) = s[j..].chars().next() {
                    value.push(escaped);
                    j += escaped.len_utf8();
                }
            } else {
                value.push(c);
            }
        }
        if quoted {
            j += 1; // the closing quote
        }
        if keep(key, value) {
            rest.push_str(&s[start..j]);
            rest.push(' ');
        }
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, Option<String>, Option<String>) {
        let (rest, ssl) = take_ssl_params(url);
        (rest, ssl.mode, ssl.root_cert)
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn key_values_lose_their_ssl_settings_and_keep_the_rest() {
        assert_eq!(
            split("host=h sslmode=verify-full port=5 sslrootcert='/a b/c\\'s.pem' dbname=x"),
            (
                "host=h port=5 dbname=x ".into(),
                s("verify-full"),
                s("/a b/c's.pem")
            )
        );
        assert_eq!(
            split("sslmode = require  user='o\\'k' sslmode=disable"),
            ("user='o\\'k' ".into(), s("disable"), None)
        );
        let plain = "host=h dbname=x";
        assert_eq!(split(plain), ("host=h dbname=x ".into(), None, None));
        // Not parseable: handed on whole for tokio-postgres's own error.
        assert_eq!(
            split("host=h sslmode"),
            ("host=h sslmode".into(), None, None)
        );
        assert_eq!(split("sslmode='x"), ("sslmode='x".into(), None, None));
    }

    #[test]
    fn urls_lose_their_ssl_settings_and_keep_the_rest() {
        assert_eq!(
            split("postgres://u:p?w@h:5/db?sslmode=verify-ca&application_name=a&sslrootcert=%2Ftmp%2Fca.pem"),
            ("postgres://u:p?w@h:5/db?application_name=a".into(), s("verify-ca"), s("/tmp/ca.pem"))
        );
        assert_eq!(
            split("postgresql://h/db?ssl%6dode=require"),
            ("postgresql://h/db".into(), s("require"), None)
        );
        assert_eq!(
            split("postgres://h/db"),
            ("postgres://h/db".into(), None, None)
        );
    }

    #[test]
    fn bad_settings_are_typed_errors() {
        let err = |url: &str| configure(url).err().map(|e| e.to_string());
        assert!(matches!(
            configure("host=h sslmode=verify"),
            Err(Error::SslMode(m)) if m.contains("\"verify\"")
        ));
        assert!(matches!(
            configure("host=h sslmode=require sslrootcert=/nonexistent/ca.pem"),
            Err(Error::SslRootCert { path, .. }) if path == "/nonexistent/ca.pem"
        ));
        assert!(matches!(
            configure("host=h sslmode=require sslrootcert=system"),
            Err(Error::SslMode(_))
        ));
        let not_pem = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let url = format!("host=h sslmode=verify-ca sslrootcert='{not_pem}'");
        assert!(
            matches!(configure(&url), Err(Error::SslRootCert { .. })),
            "{:?}",
            err(&url)
        );
        assert!(configure("host=h sslmode=require").is_ok());
        assert!(configure("postgres://h/db?sslmode=disable").is_ok());
    }

    #[test]
    fn sslmode_is_ignored_on_unix_sockets_as_libpq_does() {
        let (config, _) = configure("host=/run/postgresql sslmode=require").unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Disable);
        let (config, _) = configure("host=127.0.0.1 sslmode=require").unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        let (config, _) = configure("host=127.0.0.1").unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Prefer);
    }
}
