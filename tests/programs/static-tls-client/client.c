/* A minimal TLS client for enforcer's static-linking tests: connects to IP PORT, handshakes,
 * writes the third argument and prints what the server answers. Linked against libssl.a and
 * libcrypto.a, so OpenSSL lives in the executable itself (its .symtab), not in a shared library. */
#include <arpa/inet.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s IP PORT MESSAGE\n", argv[0]);
        return 2;
    }
    struct sockaddr_storage addr = {0};
    socklen_t len;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&addr;
    if (inet_pton(AF_INET, argv[1], &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(atoi(argv[2]));
        len = sizeof(*v4);
    } else if (inet_pton(AF_INET6, argv[1], &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(atoi(argv[2]));
        len = sizeof(*v6);
    } else {
        fprintf(stderr, "bad address %s\n", argv[1]);
        return 2;
    }
    int fd = socket(addr.ss_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, len) != 0) {
        perror("connect");
        return 1;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        fprintf(stderr, "handshake failed\n");
        return 1;
    }
    int n = (int)strlen(argv[3]);
    if (SSL_write(ssl, argv[3], n) != n) {
        fprintf(stderr, "write failed\n");
        return 1;
    }
    char buf[4096];
    int got;
    while ((got = SSL_read(ssl, buf, sizeof(buf))) > 0)
        fwrite(buf, 1, (size_t)got, stdout);
    return 0;
}
