/* wolfssl-client: a TLS client on Debian's libwolfssl (tests/tests/native_families.rs).
 *
 *   wolfssl-client IPV4 PORT LINE
 *
 * Connects, prints "from <local port>" (the test finds its events by it), handshakes without
 * checking the certificate (the peer's is self-signed), writes LINE and exits 0; exits 2 if the
 * handshake or the write fails, 1 if the TCP connection does.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: wolfssl-client IPV4 PORT LINE\n");
        return 1;
    }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
        fprintf(stderr, "bad address\n");
        return 1;
    }
    wolfSSL_Init();
    WOLFSSL_CTX *ctx = wolfSSL_CTX_new(wolfSSLv23_client_method());
    if (!ctx) {
        fprintf(stderr, "wolfSSL_CTX_new failed\n");
        return 1;
    }
    wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof to) < 0) {
        perror("connect");
        return 1;
    }
    struct sockaddr_in from;
    socklen_t len = sizeof from;
    getsockname(fd, (struct sockaddr *)&from, &len);
    printf("from %u\n", ntohs(from.sin_port));
    fflush(stdout);
    WOLFSSL *ssl = wolfSSL_new(ctx);
    if (!ssl || wolfSSL_set_fd(ssl, fd) != WOLFSSL_SUCCESS) {
        fprintf(stderr, "wolfSSL_new failed\n");
        return 1;
    }
    if (wolfSSL_connect(ssl) != WOLFSSL_SUCCESS) {
        char err[80];
        fprintf(stderr, "handshake failed: %s\n",
                wolfSSL_ERR_error_string(wolfSSL_get_error(ssl, 0), err));
        return 2;
    }
    int n = (int)strlen(argv[3]);
    if (wolfSSL_write(ssl, argv[3], n) != n) {
        fprintf(stderr, "write failed\n");
        return 2;
    }
    printf("sent with %s\n", wolfSSL_get_version(ssl));
    wolfSSL_shutdown(ssl);
    wolfSSL_free(ssl);
    close(fd);
    wolfSSL_CTX_free(ctx);
    wolfSSL_Cleanup();
    return 0;
}
