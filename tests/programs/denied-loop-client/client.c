/* denied-loop-client: one GnuTLS process that connects COUNT times, every INTERVAL_MS, and
 * times each handshake from the moment the TCP connection is up to the moment the handshake
 * returns (the flood test of tests/tests/adversary.rs: a denied library's connection must be
 * refused within 100 ms, process start-up not counted).
 *
 *   denied-loop-client IPV4 PORT COUNT INTERVAL_MS
 *
 * Prints one line per attempt, "ms=<milliseconds> rc=<gnutls return code>" (rc 0: the handshake
 * completed, i.e. the connection was NOT refused), then "done".
 */
#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: denied-loop-client IPV4 PORT COUNT INTERVAL_MS\n");
        return 2;
    }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
        fprintf(stderr, "bad address\n");
        return 2;
    }
    int count = atoi(argv[3]);
    double interval = atof(argv[4]);
    gnutls_global_init();
    gnutls_certificate_credentials_t creds;
    gnutls_certificate_allocate_credentials(&creds);
    for (int i = 0; i < count; i++) {
        double start = now_ms();
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof to) < 0) {
            perror("connect");
            return 1;
        }
        gnutls_session_t session;
        gnutls_init(&session, GNUTLS_CLIENT);
        gnutls_set_default_priority(session);
        gnutls_credentials_set(session, GNUTLS_CRD_CERTIFICATE, creds);
        gnutls_transport_set_int(session, fd);
        gnutls_handshake_set_timeout(session, 5000);
        double connected = now_ms();
        int rc;
        do {
            rc = gnutls_handshake(session);
        } while (rc < 0 && gnutls_error_is_fatal(rc) == 0);
        printf("ms=%.3f rc=%d\n", now_ms() - connected, rc);
        fflush(stdout);
        gnutls_deinit(session);
        close(fd);
        double left = interval - (now_ms() - start);
        if (left > 0)
            usleep((useconds_t)(left * 1000));
    }
    printf("done\n");
    return 0;
}
