//! A TLS client on AWS-LC's libssl, linked statically by aws-lc-sys (tests/tests/native_families.rs).
//!
//! `aws-lc-client IPV4 PORT LINE`: connects, prints `from <local port>` (the test finds its
//! events by it), handshakes without checking the certificate (the peer's is self-signed), writes
//! LINE and exits 0; exits 2 if the handshake or the write fails, 1 if the TCP connection does.
//! It also prints `OpenSSL_version()` ("AWS-LC 1.x.y"), which keeps that text in the executable
//! (the linker drops unreferenced objects of a static library, and the agent reads the version
//! from it).

use std::{
    ffi::{CStr, c_int},
    io::Write,
    net::TcpStream,
    os::fd::AsRawFd,
    process::ExitCode,
};

use aws_lc_sys as ffi;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, host, port, line] = args.as_slice() else {
        eprintln!("usage: aws-lc-client IPV4 PORT LINE");
        return ExitCode::from(1);
    };
    // SAFETY: OpenSSL_version returns a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(ffi::OpenSSL_version(ffi::OPENSSL_VERSION as c_int)) };
    println!("library {}", version.to_string_lossy());
    let stream = match TcpStream::connect((host.as_str(), port.parse().unwrap_or(0))) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("connect: {e}");
            return ExitCode::from(1);
        }
    };
    let from = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    println!("from {from}");
    let _ = std::io::stdout().flush();
    // SAFETY: plain libssl calls on objects made here, each result checked before use; the
    // socket outlives the SSL object (both end with the process).
    unsafe {
        let ctx = ffi::SSL_CTX_new(ffi::TLS_client_method());
        if ctx.is_null() {
            eprintln!("SSL_CTX_new failed");
            return ExitCode::from(1);
        }
        ffi::SSL_CTX_set_verify(ctx, ffi::SSL_VERIFY_NONE as c_int, None);
        let ssl = ffi::SSL_new(ctx);
        if ssl.is_null() || ffi::SSL_set_fd(ssl, stream.as_raw_fd()) != 1 {
            eprintln!("SSL_new failed");
            return ExitCode::from(1);
        }
        if ffi::SSL_connect(ssl) != 1 {
            eprintln!("handshake failed: {}", ffi::ERR_get_error());
            return ExitCode::from(2);
        }
        let n = line.len() as c_int;
        if ffi::SSL_write(ssl, line.as_ptr().cast(), n) != n {
            eprintln!("write failed");
            return ExitCode::from(2);
        }
        let proto = CStr::from_ptr(ffi::SSL_get_version(ssl));
        println!("sent with {}", proto.to_string_lossy());
        ffi::SSL_shutdown(ssl);
        ffi::SSL_free(ssl);
        ffi::SSL_CTX_free(ctx);
    }
    ExitCode::SUCCESS
}
