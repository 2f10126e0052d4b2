/* mbedtls-client: a TLS client on Debian's Mbed TLS (libmbedtls, libmbedx509, libmbedcrypto;
 * tests/tests/native_families.rs), with the usual CTR_DRBG as its random source.
 *
 *   mbedtls-client IPV4 PORT LINE
 *
 * Connects, prints "from <local port>" (the test finds its events by it), handshakes without
 * checking the certificate (the peer's is self-signed), writes LINE and exits 0; exits 2 if the
 * handshake or the write fails, 1 if the TCP connection does.
 */
#include <arpa/inet.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: mbedtls-client IPV4 PORT LINE\n");
        return 1;
    }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
        fprintf(stderr, "bad address\n");
        return 1;
    }
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_ssl_config conf;
    mbedtls_ssl_context ssl;
    mbedtls_net_context net;
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    mbedtls_ssl_config_init(&conf);
    mbedtls_ssl_init(&ssl);
    mbedtls_net_init(&net);
    const char *pers = "mbedtls-client";
    if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, (const unsigned char *)pers,
                              strlen(pers)) != 0 ||
        mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT) != 0) {
        fprintf(stderr, "setup failed\n");
        return 1;
    }
    mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_NONE);
    mbedtls_ssl_conf_rng(&conf, mbedtls_ctr_drbg_random, &drbg);
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
    net.fd = fd;
    if (mbedtls_ssl_setup(&ssl, &conf) != 0) {
        fprintf(stderr, "mbedtls_ssl_setup failed\n");
        return 1;
    }
    mbedtls_ssl_set_bio(&ssl, &net, mbedtls_net_send, mbedtls_net_recv, NULL);
    int rc;
    while ((rc = mbedtls_ssl_handshake(&ssl)) != 0) {
        if (rc != MBEDTLS_ERR_SSL_WANT_READ && rc != MBEDTLS_ERR_SSL_WANT_WRITE) {
            fprintf(stderr, "handshake failed: -0x%04x\n", (unsigned)-rc);
            return 2;
        }
    }
    size_t n = strlen(argv[3]);
    if (mbedtls_ssl_write(&ssl, (const unsigned char *)argv[3], n) != (int)n) {
        fprintf(stderr, "write failed\n");
        return 2;
    }
    printf("sent with %s\n", mbedtls_ssl_get_version(&ssl));
    mbedtls_ssl_close_notify(&ssl);
    mbedtls_net_free(&net);
    mbedtls_ssl_free(&ssl);
    mbedtls_ssl_config_free(&conf);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
    return 0;
}
