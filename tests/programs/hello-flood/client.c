/* hello-flood: TLS ClientHellos in bulk from a process no TLS library is in (the flood test of
 * tests/tests/adversary.rs).
 *
 *   hello-flood client IPV4 PORT_BASE PORTS RATE SECONDS
 *     opens RATE connections per second for SECONDS to IPV4:PORT_BASE..PORT_BASE+PORTS-1, sends
 *     one 52-byte ClientHello record on each as soon as it is connected (a fresh random each),
 *     and resets it (SO_LINGER 0: no TIME_WAIT, so ports are reused at once). At most MAX_OPEN in
 *     flight. Prints "started=N sent=N failed=N seconds=S" on stdout at the end.
 *   hello-flood server PORT_BASE PORTS
 *     accepts on those ports and closes each connection at once, until killed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_OPEN 2048
#define MAX_PORTS 64

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Record header, handshake header, version, random (filled per connection), empty session id,
 * one cipher suite, null compression, no extensions. */
static void hello(unsigned char out[52], uint64_t n) {
    static const unsigned char head[11] = {0x16, 0x03, 0x01, 0x00, 47,
                                           0x01, 0x00, 0x00, 43, 0x03, 0x03};
    static const unsigned char tail[9] = {0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00, 0x00, 0x00};
    memcpy(out, head, sizeof head);
    for (int i = 0; i < 32; i++)
        out[11 + i] = (unsigned char)((n >> ((i % 8) * 8)) ^ (i * 37) ^ 0x5a);
    memcpy(out + 43, tail, sizeof tail);
}

static int serve(int base, int ports) {
    int ep = epoll_create1(0);
    for (int p = 0; p < ports; p++) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(base + p)};
        if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 4096) < 0) {
            perror("bind/listen");
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = s};
        epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
    }
    printf("listening\n");
    fflush(stdout);
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            int c;
            while ((c = accept4(evs[i].data.fd, NULL, NULL, SOCK_NONBLOCK)) >= 0)
                close(c);
        }
    }
}

static int flood(const char *ip, int base, int ports, double rate, double seconds) {
    struct sockaddr_in to = {.sin_family = AF_INET};
    if (inet_pton(AF_INET, ip, &to.sin_addr) != 1 || ports < 1 || ports > MAX_PORTS) {
        fprintf(stderr, "bad address or port count\n");
        return 2;
    }
    int ep = epoll_create1(0);
    uint64_t started = 0, sent = 0, failed = 0;
    int open_now = 0;
    double t0 = now(), end = t0 + seconds;
    struct linger rst = {.l_onoff = 1, .l_linger = 0};
    struct epoll_event evs[256];
    unsigned char buf[52];
    for (;;) {
        double t = now();
        if (t >= end && open_now == 0)
            break;
        /* Start what the rate allows by now. */
        uint64_t due = t < end ? (uint64_t)((t - t0) * rate) : started;
        while (started < due && open_now < MAX_OPEN) {
            int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (s < 0) {
                failed++;
                started++;
                continue;
            }
            setsockopt(s, SOL_SOCKET, SO_LINGER, &rst, sizeof rst);
            to.sin_port = htons(base + (int)(started % ports));
            started++;
            if (connect(s, (struct sockaddr *)&to, sizeof to) < 0 && errno != EINPROGRESS) {
                failed++;
                close(s);
                continue;
            }
            struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)s};
            epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
            open_now++;
        }
        int n = epoll_wait(ep, evs, 256, 1);
        for (int i = 0; i < n; i++) {
            int s = (int)evs[i].data.u64;
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err == 0) {
                hello(buf, sent + failed);
                if (send(s, buf, sizeof buf, MSG_NOSIGNAL) == (ssize_t)sizeof buf)
                    sent++;
                else
                    failed++;
            } else {
                failed++;
            }
            close(s);
            open_now--;
        }
        if (t >= end + 5)
            break; /* connections that never completed */
    }
    printf("started=%llu sent=%llu failed=%llu seconds=%.2f\n", (unsigned long long)started,
           (unsigned long long)sent, (unsigned long long)failed, now() - t0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "server") == 0)
        return serve(atoi(argv[2]), atoi(argv[3]));
    if (argc == 7 && strcmp(argv[1], "client") == 0)
        return flood(argv[2], atoi(argv[3]), atoi(argv[4]), atof(argv[5]), atof(argv[6]));
    fprintf(stderr, "usage: hello-flood client IPV4 PORT_BASE PORTS RATE SECONDS\n"
                    "       hello-flood server PORT_BASE PORTS\n");
    return 2;
}
