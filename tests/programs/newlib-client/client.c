/* The client of tests/tests/new_libraries.rs (the new-library watcher): built with gcc at test
 * time, or prebuilt by `cargo xtask vm` for the VMs, which have no compiler. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int tcp(const char *addr, const char *port) {
    struct addrinfo hints = {0}, *res;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    if (getaddrinfo(addr, port, &hints, &res) != 0) return -1;
    int fd = socket(res->ai_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) != 0) return -1;
    freeaddrinfo(res);
    return fd;
}

static int local_port(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &len);
    return ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                          : ((struct sockaddr_in *)&ss)->sin_port);
}

/* ADDR PORT [plain]: TLS to ADDR:PORT at once; with "plain", afterwards one plain TCP
   connection to the same port, outside any TLS call. */
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    Dl_info where;
    if (dladdr((void *)SSL_connect, &where) && where.dli_fname)
        printf("libssl=%s\n", where.dli_fname);
    int fd = tcp(argv[1], argv[2]);
    if (fd < 0) { perror("connect"); return 3; }
    printf("tls_local_port=%d\n", local_port(fd));
    fflush(stdout);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) { ERR_print_errors_fp(stderr); return 4; }
    const char *req = "GET / HTTP/1.0\r\n\r\n";
    if (SSL_write(ssl, req, (int)strlen(req)) <= 0) { ERR_print_errors_fp(stderr); return 5; }
    if (argc > 3 && strcmp(argv[3], "plain") == 0) {
        int p = tcp(argv[1], argv[2]);
        if (p < 0) { perror("plain connect"); return 6; }
        printf("plain_local_port=%d\n", local_port(p));
        if (send(p, "PLAIN-AFTER-TLS\n", 16, 0) != 16) { perror("send"); return 7; }
        close(p);
    }
    printf("ok\n");
    fflush(stdout);
    SSL_shutdown(ssl);
    return 0;
}
