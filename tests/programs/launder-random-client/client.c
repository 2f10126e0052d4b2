/* Laundering an allowed library's random source: OpenSSL writes its real ClientHello into a
 * custom BIO; this program takes the bytes, asks libcrypto's RAND_bytes (the function enforcer
 * probes as OpenSSL's random source) for 32 fresh bytes, puts them in place of the hello's random
 * and sends the forged hello on a TCP socket. With MODE "inside" the random is asked for and the
 * hello sent from the BIO callback, inside SSL_do_handshake (the thread is in an allowed TLS call,
 * and that call touches the socket); with "outside", from main after the call returned. The
 * random is made by the allowed random source, but not for libssl: enforcer must not count it.
 * Usage: client HOST PORT MODE; prints "from PORT" once connected, then "answered" (exit 0: the
 * forged hello passed), "closed after N ms" (exit 3: the socket was aborted or closed N ms after
 * the send, with nothing from the server) or "no answer" (exit 4: 3 s of silence). Exit 1:
 * usage; 2: connect. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int sock;
static int inside;
static unsigned char hello[4096];
static size_t hello_len;
static struct timespec sent_at;

/* Record header (5), handshake header (4), version (2): the random follows. */
#define RANDOM_AT 11

static void forge_and_send(void) {
    unsigned char r[32];
    if (hello_len < RANDOM_AT + 32 || RAND_bytes(r, sizeof r) != 1) return;
    memcpy(hello + RANDOM_AT, r, sizeof r);
    clock_gettime(CLOCK_MONOTONIC, &sent_at);
    if (send(sock, hello, hello_len, 0) < 0) perror("send");
}

static int carrier_write(BIO *b, const char *in, int inl) {
    (void)b;
    if (hello_len == 0 && inl > 0 && (size_t)inl <= sizeof hello) {
        memcpy(hello, in, (size_t)inl);
        hello_len = (size_t)inl;
        if (inside) forge_and_send();
    }
    return inl;
}
static int carrier_read(BIO *b, char *out, int outl) {
    (void)out; (void)outl;
    BIO_set_retry_read(b);
    return -1;
}
static long carrier_ctrl(BIO *b, int cmd, long num, void *ptr) {
    (void)b; (void)num; (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc != 4) return 1;
    inside = strcmp(argv[3], "inside") == 0;
    struct sockaddr_storage ss; memset(&ss, 0, sizeof ss);
    socklen_t len;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, argv[1], &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET; a4->sin_port = htons(atoi(argv[2])); len = sizeof *a4;
    } else if (inet_pton(AF_INET6, argv[1], &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6; a6->sin6_port = htons(atoi(argv[2])); len = sizeof *a6;
    } else return 1;
    sock = socket(ss.ss_family, SOCK_STREAM, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&ss, len) != 0) return 2;
    struct sockaddr_storage me; socklen_t melen = sizeof me;
    getsockname(sock, (struct sockaddr *)&me, &melen);
    int port = me.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&me)->sin_port)
                                       : ntohs(((struct sockaddr_in6 *)&me)->sin6_port);
    printf("from %d\n", port);
    fflush(stdout);

    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(ctx);
    BIO_METHOD *m = BIO_meth_new(BIO_TYPE_SOURCE_SINK | 0x80, "carrier");
    BIO_meth_set_write(m, carrier_write);
    BIO_meth_set_read(m, carrier_read);
    BIO_meth_set_ctrl(m, carrier_ctrl);
    BIO *bio = BIO_new(m);
    BIO_set_init(bio, 1);
    SSL_set_bio(ssl, bio, bio);
    SSL_set_connect_state(ssl);
    SSL_do_handshake(ssl);
    if (!inside) forge_and_send();

    /* The server answers a hello it received with its own (or an alert): any byte back means
     * the forged hello reached it. */
    struct pollfd p = { .fd = sock, .events = POLLIN };
    if (poll(&p, 1, 3000) == 1) {
        unsigned char buf[16];
        if (recv(sock, buf, sizeof buf, 0) > 0) {
            printf("answered\n");
            return 0;
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long ms = (now.tv_sec - sent_at.tv_sec) * 1000 + (now.tv_nsec - sent_at.tv_nsec) / 1000000;
        printf("closed after %ld ms\n", ms);
        return 3;
    }
    printf("no answer\n");
    return 4;
}
