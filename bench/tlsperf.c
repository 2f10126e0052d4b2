/*
 * tlsperf: the TLS load generator and peer of `cargo xtask bench` (compiled there with
 * `gcc -O2 bench/tlsperf.c -lssl -lcrypto -lpthread`, against the system OpenSSL, so every TLS
 * call on both sides goes through the libssl that enforcer probes).
 *
 *   tlsperf server ADDR PORT CERT KEY
 *       Serves until killed, one thread per connection. The first 16 bytes a client sends after
 *       the handshake are a command: op (1 byte) 'E' | 'S' | 'C', 3 zero bytes, size (u32 LE),
 *       count (u64 LE).
 *         E  echo: read `size` bytes, write them back, until the client closes (request/response)
 *         S  sink: read `count` bytes, then write 1 byte (bulk throughput)
 *         C  churn: read `size` bytes, write them back, close
 *       Prints "listening PORT" on stdout once bound (PORT 0: the kernel picks a free one).
 *   tlsperf count ADDR PORT CERT KEY
 *       Leak peer: one thread per connection; counts the raw bytes read from the socket before
 *       the TLS handshake completes (handshake bytes) and after it (TLS record bytes carrying
 *       application data), and the decrypted application bytes. Prints one line per connection:
 *       "conn <raw_handshake> <raw_after> <app> <handshake_ok>". Sockets time out after 10 s.
 *   tlsperf tag ADDR PORT CERT KEY
 *       HTTP/1.0-ish peer for real clients (curl, urllib, asyncio, Node.js, s_client): one thread
 *       per connection; reads one request, answers "ok" with Connection: close, closes. Prints
 *       one line per connection: "conn <peer_port> <1 if a request was read, else 0> <path or ->
 *       <wall-clock ms when the connection was accepted>" (the client names its kind in the
 *       path). Sockets time out after 10 s.
 *   tlsperf rr HOST PORT SIZE SECONDS
 *       One connection; SIZE-byte request, SIZE-byte response, as many round trips as fit.
 *   tlsperf lat HOST PORT SIZE COUNT
 *       One connection, COUNT round trips like rr, each timed, and each client SSL_write and
 *       SSL_read call timed on its own: prints the round trip's p50/p99 and the calls' p50 (a
 *       probe on the call adds its traps to the call's own time: the added latency, directly).
 *   tlsperf tcpecho ADDR PORT
 *       Plain TCP echo server (no TLS), one thread per connection; "listening PORT" like server.
 *   tlsperf tcprr HOST PORT SIZE SECONDS
 *       Plain TCP request/response against tcpecho: rate, round trip p50/p99 (what the kernel
 *       TCP hook costs on traffic that is not TLS).
 *   tlsperf bulk HOST PORT RECORD BYTES
 *       One connection; writes BYTES in RECORD-byte SSL_write calls, waits for the server's ack.
 *   tlsperf churn HOST PORT CONNECTIONS THREADS SIZE
 *       CONNECTIONS full handshakes (no resumption) spread over THREADS threads, each with one
 *       SIZE-byte exchange and a close_notify.
 *   tlsperf calib
 *       What traps cost on this machine: a syscall (getppid) and an int3 breakpoint delivered
 *       as SIGTRAP (a uprobe hit is an int3 trap handled in the kernel, plus a single-step or an
 *       emulated instruction, plus another trap at return for a uretprobe).
 * Clients print one JSON line on stdout. Exit status: 0 ok, 1 usage or setup error, 2 a
 * connection failed (rr, bulk) or every connection failed (churn).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "tlsperf: %s: %s\n", what, strerror(errno));
    ERR_print_errors_fp(stderr);
    exit(1);
}

/* SSL_read / SSL_write rather than the _ex forms: the classic API most programs use, and the
 * only one the peer reference (sslsniff) probes. */
static int read_full(SSL *ssl, unsigned char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        int r = SSL_read(ssl, buf + got, (int)(n - got));
        if (r <= 0)
            return -1;
        got += r;
    }
    return 0;
}

static int write_full(SSL *ssl, const unsigned char *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        int w = SSL_write(ssl, buf + done, (int)(n - done));
        if (w <= 0)
            return -1;
        done += w;
    }
    return 0;
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* ---- server ------------------------------------------------------------------------------ */

static SSL_CTX *server_ctx(const char *cert, const char *key) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        die("server certificate");
    /* Full handshakes every time: no tickets, no session cache. */
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    return ctx;
}

static int listen_on(const char *addr, const char *port) {
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST | AI_PASSIVE};
    struct addrinfo *ai;
    if (getaddrinfo(addr, port, &hints, &ai) != 0) {
        fprintf(stderr, "tlsperf: bad address %s:%s\n", addr, port);
        exit(1);
    }
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 4096) != 0)
        die("listen");
    freeaddrinfo(ai);
    return fd;
}

struct conn {
    SSL_CTX *ctx;
    int fd;
    /* The client's port and the wall-clock ms, both taken when accept() returned: a peer
     * that resets before the handler runs has no peer name left to ask for. */
    int port;
    long long accepted_ms;
};

static void *serve_one(void *arg) {
    struct conn *c = arg;
    SSL *ssl = SSL_new(c->ctx);
    unsigned char *buf = NULL;
    nodelay(c->fd);
    SSL_set_fd(ssl, c->fd);
    unsigned char cmd[16];
    if (SSL_accept(ssl) != 1 || read_full(ssl, cmd, sizeof cmd) != 0)
        goto out;
    uint32_t size;
    uint64_t count;
    memcpy(&size, cmd + 4, 4);
    memcpy(&count, cmd + 8, 8);
    if (size == 0 || size > (1u << 24))
        goto out;
    buf = malloc(size);
    switch (cmd[0]) {
    case 'E':
        while (read_full(ssl, buf, size) == 0 && write_full(ssl, buf, size) == 0)
            ;
        break;
    case 'C':
        if (read_full(ssl, buf, size) == 0 && write_full(ssl, buf, size) == 0)
            SSL_shutdown(ssl);
        break;
    case 'S': {
        uint64_t got = 0;
        while (got < count) {
            int r = SSL_read(ssl, buf, (int)size);
            if (r <= 0)
                goto out;
            got += r;
        }
        unsigned char ack = 'k';
        write_full(ssl, &ack, 1);
        break;
    }
    }
out:
    free(buf);
    SSL_free(ssl);
    close(c->fd);
    free(c);
    return NULL;
}

/* ---- leak peer --------------------------------------------------------------------------- */

struct counted {
    int handshaking;
    uint64_t raw_handshake, raw_after;
};

static long count_cb(BIO *b, int oper, const char *argp, size_t len, int argi, long argl, int ret,
                     size_t *processed) {
    (void)argp, (void)len, (void)argi, (void)argl;
    if (oper == (BIO_CB_READ | BIO_CB_RETURN) && ret > 0 && processed) {
        struct counted *k = (struct counted *)BIO_get_callback_arg(b);
        if (k->handshaking)
            k->raw_handshake += *processed;
        else
            k->raw_after += *processed;
    }
    return ret;
}

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void *count_one(void *arg) {
    struct conn *c = arg;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct counted k = {.handshaking = 1};
    BIO *bio = BIO_new_socket(c->fd, BIO_NOCLOSE);
    BIO_set_callback_ex(bio, count_cb);
    BIO_set_callback_arg(bio, (char *)&k);
    SSL *ssl = SSL_new(c->ctx);
    SSL_set_bio(ssl, bio, bio);
    int ok = SSL_accept(ssl) == 1;
    k.handshaking = 0;
    uint64_t app = 0;
    if (ok) {
        unsigned char buf[16384];
        int r;
        while ((r = SSL_read(ssl, buf, sizeof buf)) > 0)
            app += r;
    } else {
        /* Whatever else arrives before the peer goes away still counts. */
        unsigned char buf[4096];
        ssize_t r;
        while ((r = read(c->fd, buf, sizeof buf)) > 0)
            k.raw_after += r;
    }
    pthread_mutex_lock(&out_lock);
    printf("conn %llu %llu %llu %d\n", (unsigned long long)k.raw_handshake,
           (unsigned long long)k.raw_after, (unsigned long long)app, ok);
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
    SSL_free(ssl);
    close(c->fd);
    free(c);
    return NULL;
}


/* ---- tagging peer ------------------------------------------------------------------------ */

static void *tag_one(void *arg) {
    struct conn *c = arg;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    SSL *ssl = SSL_new(c->ctx);
    SSL_set_fd(ssl, c->fd);
    char req[4096], path[128] = "-";
    int ok = 0;
    if (SSL_accept(ssl) == 1) {
        int n = SSL_read(ssl, req, sizeof req - 1);
        if (n > 0) {
            req[n] = 0;
            char *p = strchr(req, ' ');
            if (p) {
                size_t len = strcspn(p + 1, " \r\n");
                if (len > sizeof path - 1)
                    len = sizeof path - 1;
                memcpy(path, p + 1, len);
                path[len] = 0;
            }
            ok = 1;
            static const char resp[] =
                "HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
            write_full(ssl, (const unsigned char *)resp, sizeof resp - 1);
            SSL_shutdown(ssl);
        }
    }
    pthread_mutex_lock(&out_lock);
    printf("conn %d %d %s %lld\n", c->port, ok, path[0] ? path : "-", c->accepted_ms);
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
    SSL_free(ssl);
    close(c->fd);
    free(c);
    return NULL;
}

static int serve(int argc, char **argv, void *(*handler)(void *)) {
    if (argc != 6) {
        fprintf(stderr, "usage: tlsperf %s ADDR PORT CERT KEY\n", argv[1]);
        return 1;
    }
    SSL_CTX *ctx = server_ctx(argv[4], argv[5]);
    int lfd = listen_on(argv[2], argv[3]);
    /* PORT 0 picks a free port: print the one bound. */
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(lfd, (struct sockaddr *)&ss, &sl);
    int port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                              : ((struct sockaddr_in *)&ss)->sin_port);
    printf("listening %d\n", port);
    fflush(stdout);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (;;) {
        struct sockaddr_storage peer;
        socklen_t peer_len = sizeof peer;
        int fd = accept(lfd, (struct sockaddr *)&peer, &peer_len);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE)
                continue;
            die("accept");
        }
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        struct conn *c = malloc(sizeof *c);
        c->ctx = ctx;
        c->fd = fd;
        c->port = ntohs(peer.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&peer)->sin6_port
                                                   : ((struct sockaddr_in *)&peer)->sin_port);
        c->accepted_ms = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
        pthread_t t;
        if (pthread_create(&t, &attr, handler, c) != 0) {
            close(fd);
            free(c);
        }
    }
}

/* ---- clients ----------------------------------------------------------------------------- */

static SSL_CTX *client_ctx(void) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        die("SSL_CTX_new");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    return ctx;
}

static int dial(const char *host, const char *port) {
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST};
    struct addrinfo *ai;
    if (getaddrinfo(host, port, &hints, &ai) != 0)
        return -1;
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd >= 0)
        nodelay(fd);
    return fd;
}

static SSL *tls_dial(SSL_CTX *ctx, const char *host, const char *port, int *fdp) {
    int fd = dial(host, port);
    if (fd < 0)
        return NULL;
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        SSL_free(ssl);
        close(fd);
        return NULL;
    }
    *fdp = fd;
    return ssl;
}

static void command(unsigned char cmd[16], char op, uint32_t size, uint64_t count) {
    memset(cmd, 0, 16);
    cmd[0] = op;
    memcpy(cmd + 4, &size, 4);
    memcpy(cmd + 8, &count, 8);
}

static int rr(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: tlsperf rr HOST PORT SIZE SECONDS\n");
        return 1;
    }
    uint32_t size = atoi(argv[4]);
    double secs = atof(argv[5]);
    SSL_CTX *ctx = client_ctx();
    int fd;
    SSL *ssl = tls_dial(ctx, argv[2], argv[3], &fd);
    if (!ssl) {
        fprintf(stderr, "tlsperf: rr: connection failed\n");
        return 2;
    }
    unsigned char cmd[16], *buf = calloc(1, size);
    command(cmd, 'E', size, 0);
    if (write_full(ssl, cmd, 16) != 0)
        return 2;
    uint64_t n = 0;
    double start = now(), end = start + secs, t = start;
    while (t < end) {
        /* Check the clock every 64 round trips. */
        for (int i = 0; i < 64; i++) {
            if (write_full(ssl, buf, size) != 0 || read_full(ssl, buf, size) != 0) {
                fprintf(stderr, "tlsperf: rr: round trip failed\n");
                return 2;
            }
        }
        n += 64;
        t = now();
    }
    double elapsed = t - start;
    printf("{\"round_trips\":%llu,\"seconds\":%.6f,\"rate\":%.1f}\n", (unsigned long long)n,
           elapsed, n / elapsed);
    SSL_shutdown(ssl);
    SSL_free(ssl);
    close(fd);
    return 0;
}

static int bulk(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: tlsperf bulk HOST PORT RECORD BYTES\n");
        return 1;
    }
    uint32_t record = atoi(argv[4]);
    uint64_t total = strtoull(argv[5], NULL, 10);
    SSL_CTX *ctx = client_ctx();
    int fd;
    SSL *ssl = tls_dial(ctx, argv[2], argv[3], &fd);
    if (!ssl) {
        fprintf(stderr, "tlsperf: bulk: connection failed\n");
        return 2;
    }
    unsigned char cmd[16], *buf = calloc(1, record);
    command(cmd, 'S', record, total);
    if (write_full(ssl, cmd, 16) != 0)
        return 2;
    uint64_t sent = 0;
    unsigned long long calls = 0;
    double start = now();
    while (sent < total) {
        size_t n = total - sent < record ? total - sent : record;
        if (write_full(ssl, buf, n) != 0) {
            fprintf(stderr, "tlsperf: bulk: write failed\n");
            return 2;
        }
        sent += n;
        calls++;
    }
    unsigned char ack;
    if (read_full(ssl, &ack, 1) != 0) {
        fprintf(stderr, "tlsperf: bulk: no ack\n");
        return 2;
    }
    double elapsed = now() - start;
    printf("{\"bytes\":%llu,\"writes\":%llu,\"seconds\":%.6f,\"rate\":%.1f}\n",
           (unsigned long long)sent, calls, elapsed, sent / elapsed);
    SSL_free(ssl);
    close(fd);
    return 0;
}

/* ---- latency ----------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The q-quantile of v[0..n) (sorts v). */
static double quantile(double *v, size_t n, double q) {
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, cmp_double);
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

static int lat(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: tlsperf lat HOST PORT SIZE COUNT\n");
        return 1;
    }
    uint32_t size = atoi(argv[4]);
    long count = atol(argv[5]);
    if (size < 1 || count < 1)
        return 1;
    SSL_CTX *ctx = client_ctx();
    int fd;
    SSL *ssl = tls_dial(ctx, argv[2], argv[3], &fd);
    if (!ssl) {
        fprintf(stderr, "tlsperf: lat: connection failed\n");
        return 2;
    }
    unsigned char cmd[16], *buf = calloc(1, size);
    command(cmd, 'E', size, 0);
    if (write_full(ssl, cmd, 16) != 0)
        return 2;
    double *rtt = malloc(count * sizeof *rtt), *wr = malloc(count * sizeof *wr),
           *rd = malloc(count * sizeof *rd);
    double start = now();
    for (long i = 0; i < count; i++) {
        double t0 = now();
        if (SSL_write(ssl, buf, (int)size) != (int)size) {
            fprintf(stderr, "tlsperf: lat: write failed\n");
            return 2;
        }
        double t1 = now();
        /* Wait for the response outside the timed read: poll until bytes are there. */
        struct timeval tv;
        fd_set set;
        for (;;) {
            FD_ZERO(&set);
            FD_SET(fd, &set);
            tv.tv_sec = 5, tv.tv_usec = 0;
            if (SSL_pending(ssl) > 0 || select(fd + 1, &set, NULL, NULL, &tv) > 0)
                break;
        }
        double t2 = now();
        if (read_full(ssl, buf, size) != 0) {
            fprintf(stderr, "tlsperf: lat: read failed\n");
            return 2;
        }
        double t3 = now();
        rtt[i] = (t3 - t0) * 1e6;
        wr[i] = (t1 - t0) * 1e9;
        rd[i] = (t3 - t2) * 1e9;
    }
    double elapsed = now() - start;
    double p50 = quantile(rtt, count, 0.5), p99 = quantile(rtt, count, 0.99);
    printf("{\"round_trips\":%ld,\"seconds\":%.6f,\"rate\":%.1f,\"rtt_p50_us\":%.2f,"
           "\"rtt_p99_us\":%.2f,\"write_call_p50_ns\":%.0f,\"read_call_p50_ns\":%.0f}\n",
           count, elapsed, count / elapsed, p50, p99, quantile(wr, count, 0.5),
           quantile(rd, count, 0.5));
    SSL_shutdown(ssl);
    SSL_free(ssl);
    close(fd);
    return 0;
}

/* ---- plain TCP --------------------------------------------------------------------------- */

static void *tcp_echo_one(void *arg) {
    int fd = (int)(intptr_t)arg;
    char buf[65536];
    nodelay(fd);
    ssize_t r;
    while ((r = read(fd, buf, sizeof buf)) > 0) {
        ssize_t off = 0;
        while (off < r) {
            ssize_t w = write(fd, buf + off, r - off);
            if (w <= 0)
                goto out;
            off += w;
        }
    }
out:
    close(fd);
    return NULL;
}

static int tcp_echo(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: tlsperf tcpecho ADDR PORT\n");
        return 1;
    }
    int lfd = listen_on(argv[2], argv[3]);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(lfd, (struct sockaddr *)&ss, &sl);
    int port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                              : ((struct sockaddr_in *)&ss)->sin_port);
    printf("listening %d\n", port);
    fflush(stdout);
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE)
                continue;
            die("accept");
        }
        pthread_t t;
        if (pthread_create(&t, NULL, tcp_echo_one, (void *)(intptr_t)fd) != 0)
            close(fd);
        else
            pthread_detach(t);
    }
}

static int full_io(int fd, unsigned char *buf, size_t n, int writing) {
    size_t off = 0;
    while (off < n) {
        ssize_t r = writing ? write(fd, buf + off, n - off) : read(fd, buf + off, n - off);
        if (r <= 0)
            return -1;
        off += r;
    }
    return 0;
}

static int tcp_rr(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: tlsperf tcprr HOST PORT SIZE SECONDS\n");
        return 1;
    }
    uint32_t size = atoi(argv[4]);
    double secs = atof(argv[5]);
    int fd = dial(argv[2], argv[3]);
    if (fd < 0 || size < 1) {
        fprintf(stderr, "tlsperf: tcprr: connection failed\n");
        return 2;
    }
    unsigned char *buf = calloc(1, size);
    size_t cap = 1 << 20, n = 0;
    double *rtt = malloc(cap * sizeof *rtt);
    double start = now(), end = start + secs, t = start;
    while (t < end) {
        double t0 = t;
        if (full_io(fd, buf, size, 1) != 0 || full_io(fd, buf, size, 0) != 0) {
            fprintf(stderr, "tlsperf: tcprr: round trip failed\n");
            return 2;
        }
        t = now();
        if (n < cap)
            rtt[n] = (t - t0) * 1e6;
        n++;
    }
    double elapsed = t - start;
    size_t kept = n < cap ? n : cap;
    printf("{\"round_trips\":%zu,\"seconds\":%.6f,\"rate\":%.1f,\"rtt_p50_us\":%.2f,"
           "\"rtt_p99_us\":%.2f}\n",
           n, elapsed, n / elapsed, quantile(rtt, kept, 0.5), quantile(rtt, kept, 0.99));
    close(fd);
    return 0;
}

struct churn {
    SSL_CTX *ctx;
    const char *host, *port;
    uint32_t size;
    atomic_long next;
    long total;
    atomic_long ok, failed;
};

static void *churn_worker(void *arg) {
    struct churn *w = arg;
    unsigned char cmd[16], *buf = calloc(1, w->size);
    command(cmd, 'C', w->size, 0);
    while (atomic_fetch_add(&w->next, 1) < w->total) {
        int fd;
        SSL *ssl = tls_dial(w->ctx, w->host, w->port, &fd);
        int ok = ssl && write_full(ssl, cmd, 16) == 0 && write_full(ssl, buf, w->size) == 0 &&
                 read_full(ssl, buf, w->size) == 0;
        if (ssl) {
            if (ok)
                SSL_shutdown(ssl);
            SSL_free(ssl);
            close(fd);
        }
        atomic_fetch_add(ok ? &w->ok : &w->failed, 1);
    }
    free(buf);
    return NULL;
}

static int churn(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: tlsperf churn HOST PORT CONNECTIONS THREADS SIZE\n");
        return 1;
    }
    struct churn w = {.ctx = client_ctx(), .host = argv[2], .port = argv[3]};
    w.total = atol(argv[4]);
    int threads = atoi(argv[5]);
    w.size = atoi(argv[6]);
    if (threads < 1 || threads > 256 || w.size < 1)
        return 1;
    pthread_t t[256];
    double start = now();
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, churn_worker, &w);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    double elapsed = now() - start;
    long ok = atomic_load(&w.ok), failed = atomic_load(&w.failed);
    printf("{\"connections\":%ld,\"failed\":%ld,\"seconds\":%.6f,\"rate\":%.1f}\n", ok, failed,
           elapsed, ok / elapsed);
    return ok > 0 ? 0 : 2;
}

static void on_trap(int sig) { (void)sig; }

static int calib(void) {
    const int n = 20000;
    double t0 = now();
    for (int i = 0; i < n; i++)
        syscall(SYS_getppid);
    double t1 = now();
    signal(SIGTRAP, on_trap);
    for (int i = 0; i < n; i++)
        __asm__ volatile("int3");
    double t2 = now();
    printf("{\"syscall_ns\":%.1f,\"int3_sigtrap_ns\":%.1f}\n", (t1 - t0) * 1e9 / n,
           (t2 - t1) * 1e9 / n);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 2 && !strcmp(argv[1], "server"))
        return serve(argc, argv, serve_one);
    if (argc >= 2 && !strcmp(argv[1], "count"))
        return serve(argc, argv, count_one);
    if (argc >= 2 && !strcmp(argv[1], "tag"))
        return serve(argc, argv, tag_one);
    if (argc >= 2 && !strcmp(argv[1], "rr"))
        return rr(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "lat"))
        return lat(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "tcpecho"))
        return tcp_echo(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "tcprr"))
        return tcp_rr(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "bulk"))
        return bulk(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "calib"))
        return calib();
    if (argc >= 2 && !strcmp(argv[1], "churn"))
        return churn(argc, argv);
    fprintf(stderr, "usage: tlsperf server|count|tag|tcpecho|rr|lat|tcprr|bulk|churn|calib ...\n");
    return 1;
}
