//! `rustls-server ADDR PORT CERT_PEM KEY_PEM`: a TLS server made with rustls (the crypto provider
//! the build's feature chose) on ADDR:PORT. Prints `listening` once bound; for each connection
//! it completes the handshake, reads once, answers `rustls-server` and closes, and prints
//! `read N` (the application bytes it got; 0 when the handshake or the read failed).
//! `RUSTLS_GROUPS` and `RUSTLS_TLS12` as for the client (src/tuning.rs).

#[path = "../tuning.rs"]
mod tuning;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
    let [_, addr, port, cert, key] = args.as_slice() else {
        return Err("usage: rustls-server ADDR PORT CERT_PEM KEY_PEM".into());
    };
    let ip: IpAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let port: u16 = port.parse().map_err(|e| format!("{port}: {e}"))?;
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{cert}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(tuning::groups(provider())?))
        .with_protocol_versions(tuning::versions())
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    let config = Arc::new(config);
    let listener = TcpListener::bind((ip, port)).map_err(|e| format!("bind: {e}"))?;
    let mut out = std::io::stdout();
    writeln!(out, "listening")
        .and_then(|_| out.flush())
        .map_err(|e| e.to_string())?;
    for sock in listener.incoming() {
        let Ok(mut sock) = sock else { continue };
        // A client whose handshake was cut off may never reset: the read gives up.
        let _ = sock.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) else {
            continue;
        };
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        let mut buf = [0u8; 1024];
        let got = tls.read(&mut buf).unwrap_or(0);
        if got > 0 {
            let _ = tls.write_all(b"rustls-server\n");
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
        let _ = writeln!(out, "read {got}").and_then(|_| out.flush());
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("rustls-server: {e}");
        std::process::exit(1);
    }
}
