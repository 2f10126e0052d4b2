//! `rustls-client HOST PORT REQUEST CA_PEM`: connects to HOST:PORT with rustls (the crypto
//! provider the build's feature chose), trusting only the certificate in CA_PEM (pinned: the
//! tests' certificates are self-signed, which webpki refuses as a server's), prints
//! `from LOCAL_PORT` once connected, sends REQUEST and prints what the server answers until it
//! closes. Exit status 0 when the handshake
//! completed and the connection ended cleanly, 1 otherwise (the error on stderr).
//!
//! `RUSTLS_GROUPS` (e.g. `X25519MLKEM768` or `X25519,secp256r1`): offer only these key-exchange
//! groups, in this order; `RUSTLS_TLS12=1`: TLS 1.2 only (src/tuning.rs; the server reads the
//! same).

mod tuning;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, SignatureScheme};

/// Accepts exactly one certificate, and only with a valid handshake signature by its key.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::General("not the pinned certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(all(feature = "aws-lc-rs", not(feature = "ring")))]
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, host, port, request, ca] = args.as_slice() else {
        return Err("usage: rustls-client HOST PORT REQUEST CA_PEM".into());
    };
    let ip: IpAddr = host.parse().map_err(|e| format!("{host}: {e}"))?;
    let cert = CertificateDer::from_pem_file(ca).map_err(|e| format!("{ca}: {e}"))?;
    let provider = tuning::groups(provider())?;
    let verifier = Pinned {
        cert,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(tuning::versions())
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::IpAddress(ip.into()))
            .map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect((ip, port.parse::<u16>().map_err(|e| e.to_string())?))
        .map_err(|e| format!("connect: {e}"))?;
    let from = sock.local_addr().map_err(|e| e.to_string())?.port();
    let mut out = std::io::stdout();
    writeln!(out, "from {from}")
        .and_then(|_| out.flush())
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    match tls.read_to_end(&mut answer) {
        Ok(_) => {}
        // s_server -www closes without close_notify.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    out.write_all(&answer).map_err(|e| e.to_string())?;
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("rustls-client: {e}");
        std::process::exit(1);
    }
}
