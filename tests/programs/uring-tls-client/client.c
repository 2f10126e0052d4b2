/* An OpenSSL client over memory BIOs whose socket writes are issued by io_uring
 * (IORING_OP_SEND; with "async", IOSQE_ASYNC: an io-wq worker thread sends).
 * Usage: client HOST PORT LINE [async]. Prints "sent from PORT", exit 0 once LINE is written.
 * Exit 2: connect failed; 3: handshake failed; 5: io_uring unavailable. */
#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct io_uring ring;
static int async_send;

/* Sends everything queued in the write BIO through io_uring. */
static int flush(int fd, BIO *wbio) {
    char buf[16384];
    int n;
    while ((n = BIO_read(wbio, buf, sizeof buf)) > 0) {
        int off = 0;
        while (off < n) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
            io_uring_prep_send(sqe, fd, buf + off, n - off, 0);
            if (async_send) sqe->flags |= IOSQE_ASYNC;
            io_uring_submit(&ring);
            struct io_uring_cqe *cqe;
            if (io_uring_wait_cqe(&ring, &cqe) < 0 || cqe->res <= 0) return -1;
            off += cqe->res;
            io_uring_cqe_seen(&ring, cqe);
        }
    }
    return 0;
}

/* Reads what the socket has into the read BIO (plain recv: reads are not what is judged). */
static int fill(int fd, BIO *rbio) {
    char buf[16384];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return -1;
    BIO_write(rbio, buf, (int)n);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) return 1;
    async_send = argc > 4 && strcmp(argv[4], "async") == 0;
    if (io_uring_queue_init(8, &ring, 0) < 0) { fprintf(stderr, "io_uring unavailable\n"); return 5; }
    struct sockaddr_storage ss; memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss; struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    socklen_t len;
    if (inet_pton(AF_INET, argv[1], &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET; a4->sin_port = htons(atoi(argv[2])); len = sizeof *a4;
    } else if (inet_pton(AF_INET6, argv[1], &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6; a6->sin6_port = htons(atoi(argv[2])); len = sizeof *a6;
    } else return 1;
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&ss, len) != 0) return 2;
    struct sockaddr_storage me; socklen_t melen = sizeof me;
    getsockname(fd, (struct sockaddr *)&me, &melen);
    int port = ntohs(me.ss_family == AF_INET ? ((struct sockaddr_in *)&me)->sin_port : ((struct sockaddr_in6 *)&me)->sin6_port);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(ctx);
    BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
    SSL_set_bio(ssl, rbio, wbio);
    SSL_set_connect_state(ssl);
    SSL_set_tlsext_host_name(ssl, "uring.example");
    for (;;) {
        int r = SSL_do_handshake(ssl);
        if (flush(fd, wbio) != 0) return 3;
        if (r == 1) break;
        if (SSL_get_error(ssl, r) != SSL_ERROR_WANT_READ || fill(fd, rbio) != 0) return 3;
    }
    if (SSL_write(ssl, argv[3], strlen(argv[3])) <= 0 || flush(fd, wbio) != 0) return 4;
    printf("sent from %d\n", port);
    fflush(stdout);
    usleep(300000);
    return 0;
}
