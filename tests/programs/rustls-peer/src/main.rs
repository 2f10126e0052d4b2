//! `rustls-peer server ADDR CERT KEY [GROUPS]`: accepts TLS connections and prints each line
//! received. `rustls-peer client ADDR LINE [GROUPS]`: connects (no certificate check: a test
//! peer), sends LINE, exits 0 once it is written. GROUPS: comma-separated key-exchange groups
//! (`X25519MLKEM768`, `X25519`, `secp256r1`); `X25519MLKEM768,X25519,secp256r1` if absent (what
//! rustls' `prefer-post-quantum` default feature orders, without pulling its other defaults).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

fn provider(groups: Option<&str>) -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    p.kx_groups = groups
        .unwrap_or("X25519MLKEM768,X25519,secp256r1")
        .split(',')
        .map(|name| match name {
            "X25519MLKEM768" => aws_lc_rs::kx_group::X25519MLKEM768,
            "X25519" => aws_lc_rs::kx_group::X25519,
            "secp256r1" => aws_lc_rs::kx_group::SECP256R1,
            other => panic!("unknown group {other}"),
        })
        .collect();
    Arc::new(p)
}

#[derive(Debug)]
struct NoCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn server(addr: &str, cert: &str, key: &str, groups: Option<&str>) {
    let certs: Vec<_> = CertificateDer::pem_file_iter(cert)
        .expect("certificate file")
        .map(|c| c.expect("certificate"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).expect("key file");
    let config = rustls::ServerConfig::builder_with_provider(provider(groups))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
    let config = Arc::new(config);
    let listener = TcpListener::bind(addr).expect("bind");
    println!("listening");
    for stream in listener.incoming() {
        let Ok(mut tcp) = stream else { continue };
        let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) else {
            continue;
        };
        let tls = rustls::Stream::new(&mut conn, &mut tcp);
        for line in BufReader::new(tls).lines() {
            match line {
                Ok(l) => println!("{l}"),
                Err(_) => break,
            }
        }
    }
}

fn client(addr: &str, line: &str, groups: Option<&str>) {
    let p = provider(groups);
    let config = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoCheck(p)))
        .with_no_client_auth();
    let name = ServerName::try_from("peer.example").expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut tcp = TcpStream::connect(addr).expect("connect");
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    if let Err(e) = tls
        .write_all(format!("{line}\n").as_bytes())
        .and_then(|()| tls.flush())
    {
        eprintln!("rustls-peer client: {e}");
        std::process::exit(1);
    }
    println!(
        "negotiated {:?}",
        tls.conn.negotiated_key_exchange_group().map(|g| g.name())
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match (arg(1), arg(2), arg(3)) {
        (Some("server"), Some(addr), Some(cert)) => {
            server(addr, cert, arg(4).expect("KEY"), arg(5))
        }
        (Some("client"), Some(addr), Some(line)) => client(addr, line, arg(4)),
        _ => {
            eprintln!(
                "usage: rustls-peer server ADDR CERT KEY [GROUPS] | client ADDR LINE [GROUPS]"
            );
            std::process::exit(2);
        }
    }
}
