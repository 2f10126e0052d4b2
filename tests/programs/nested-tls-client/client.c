/* A GnuTLS client whose records reach the socket from inside an OpenSSL call: GnuTLS's push
 * function hands its bytes to SSL_write on a throw-away OpenSSL object, whose custom BIO sends
 * them. When the ClientHello is sent, the innermost probed call of the thread is OpenSSL's
 * (allowed) though GnuTLS (denied) made it. Usage: client HOST PORT LINE; prints
 * "sent from PORT" after the handshake. Exit 2: connect; 3: handshake; 4: write. */
#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int sock;
static const void *pending;
static size_t pending_len;
static SSL *carrier;

/* The carrier's BIO: whatever OpenSSL writes, GnuTLS's pending bytes go out instead. */
static int carrier_write(BIO *b, const char *in, int inl) {
    (void)b; (void)in;
    if (pending_len > 0) {
        ssize_t n = send(sock, pending, pending_len, 0);
        if (n > 0) pending_len = 0;
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

static ssize_t push(gnutls_transport_ptr_t p, const void *data, size_t len) {
    (void)p;
    pending = data;
    pending_len = len;
    /* A fresh carrier each time: SSL_do_handshake writes its own ClientHello to the BIO. */
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    carrier = SSL_new(ctx);
    BIO_METHOD *m = BIO_meth_new(BIO_TYPE_SOURCE_SINK | 0x80, "carrier");
    BIO_meth_set_write(m, carrier_write);
    BIO_meth_set_read(m, carrier_read);
    BIO_meth_set_ctrl(m, carrier_ctrl);
    BIO *bio = BIO_new(m);
    BIO_set_init(bio, 1);
    SSL_set_bio(carrier, bio, bio);
    SSL_set_connect_state(carrier);
    SSL_do_handshake(carrier);
    if (pending_len > 0) {  /* not sent from inside the call: send now */
        ssize_t n = send(sock, data, len, 0);
        return n;
    }
    return (ssize_t)len;
}

int main(int argc, char **argv) {
    if (argc < 4) return 1;
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
    printf("from %d\n", ntohs(me.ss_family == AF_INET ? ((struct sockaddr_in *)&me)->sin_port
                                                      : ((struct sockaddr_in6 *)&me)->sin6_port));
    fflush(stdout);
    gnutls_global_init();
    gnutls_certificate_credentials_t cred;
    gnutls_certificate_allocate_credentials(&cred);
    gnutls_session_t s;
    gnutls_init(&s, GNUTLS_CLIENT);
    gnutls_set_default_priority(s);
    gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, cred);
    gnutls_transport_set_int(s, sock);
    gnutls_transport_set_push_function(s, push);
    gnutls_handshake_set_timeout(s, 3000);
    if (gnutls_handshake(s) < 0) return 3;
    printf("handshake ok\n");
    if (gnutls_record_send(s, argv[3], strlen(argv[3])) < 0) return 4;
    return 0;
}
