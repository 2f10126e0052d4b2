//! A TLS client no uprobe can see: a real OpenSSL client linked *statically* and stripped
//! (built with gcc from Debian's `libssl.a`). It speaks ordinary TLS, but no shared libssl is
//! mapped and no symbol is left to find. Used by the unattributed-TLS and reload tests.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// Connects to argv[1]:argv[2] sending server name argv[3], completes the handshake, writes
/// argv[4] and prints `handshake=ok`. Exit 2: connect failed; 3: handshake failed; 4: write.
/// With a fifth argument `hold`, it keeps the connection open until its stdin ends (a test
/// that must see the socket while it exists).
const CLIENT_C: &str = r#"
#include <arpa/inet.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc != 5 && !(argc == 6 && strcmp(argv[5], "hold") == 0)) return 1;
    struct sockaddr_storage ss = {0};
    socklen_t len;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, argv[1], &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET; a4->sin_port = htons(atoi(argv[2])); len = sizeof *a4;
    } else if (inet_pton(AF_INET6, argv[1], &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6; a6->sin6_port = htons(atoi(argv[2])); len = sizeof *a6;
    } else return 1;
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&ss, len) != 0) return 2;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, argv[3]);
    if (SSL_connect(ssl) != 1) { puts("handshake=failed"); return 3; }
    puts("handshake=ok");
    fflush(stdout);
    if (SSL_write(ssl, argv[4], strlen(argv[4])) <= 0) return 4;
    if (argc == 6) { char b; while (read(0, &b, 1) > 0) {} }
    SSL_shutdown(ssl);
    return 0;
}
"#;

/// Builds the static, stripped client in `dir`.
pub fn build_static_client(dir: &Path) -> PathBuf {
    let src = dir.join("client.c");
    let bin = dir.join("hidden_tls");
    fs::write(&src, CLIENT_C).expect("write client source");
    let out = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&bin)
        .arg(&src)
        .args(["-l:libssl.a", "-l:libcrypto.a", "-lpthread"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run gcc ({e}): `cargo xtask setup` installs it"));
    assert!(
        out.status.success(),
        "gcc -static failed (libssl-dev missing? `cargo xtask setup` installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    crate::sh(Command::new("strip").arg("--strip-all").arg(&bin));
    let nm = Command::new("nm").arg(&bin).output().expect("run nm");
    assert!(
        String::from_utf8_lossy(&nm.stderr).contains("no symbols"),
        "the client must have no symbols left"
    );
    bin
}
