/* A user-space link emulator between two TUN devices (this kernel has no netem).
 *
 *     linkemu --rate-mbps 100 --delay-ms 50 --loss 0.01 --queue-bdp 1 \
 *         --tun-a jsbA0 --tun-b jsbB0 [--seed 1]
 *
 * bench/netlab.py compiles it (gcc -O2) and runs it. It opens two TUN devices in the
 * current network namespace and forwards IP packets between them, in each direction: a
 * tail-drop bottleneck queue (--queue-bdp bandwidth-delay products, at least 64 KiB)
 * drained at --rate-mbps, then --delay-ms of one-way delay, then random loss with
 * probability --loss. The devices can be moved into other network namespaces after it
 * prints "ready" (a TUN descriptor stays attached to its device). It prints its counters
 * as a JSON line on SIGUSR1, and on SIGTERM or SIGINT, when it exits.
 *
 * Written in C because the link must be faster than what crosses it: the Python version
 * it replaced carried at most ~450 Mbit/s on the project's 2-core test machine.
 * Departures are spaced by the link rate on a virtual clock (when the bottleneck finishes
 * a packet), not by when this loop wakes up, so a late wake-up does not slow the link.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define MAX_PACKET 65536

struct packet {
    struct packet *next;
    double due; /* when it arrives at the far end */
    size_t len;
    unsigned char data[];
};

struct fifo {
    struct packet *head, *tail;
};

struct direction {
    const char *name;
    int out_fd;
    double rate_bps, delay_s, loss;
    size_t queue_bytes, queued;
    double link_free; /* when the bottleneck finishes the packet on it */
    struct fifo queue;     /* the bottleneck queue */
    struct fifo in_flight; /* on the wire: departures are in order, so arrivals are */
    unsigned long long packets, bytes, queue_drops, random_drops, delivered, write_drops,
        down_drops;
};

static volatile sig_atomic_t stop, report;
static uint64_t rng_state;

static void on_stop(int sig) { (void)sig; stop = 1; }
static void on_report(int sig) { (void)sig; report = 1; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double uniform(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (z >> 11) * (1.0 / 9007199254740992.0);
}

static void push(struct fifo *f, struct packet *p) {
    p->next = NULL;
    if (f->tail) f->tail->next = p; else f->head = p;
    f->tail = p;
}

static struct packet *pop(struct fifo *f) {
    struct packet *p = f->head;
    if (p) {
        f->head = p->next;
        if (!f->head) f->tail = NULL;
    }
    return p;
}

static int open_tun(const char *name) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) { perror("/dev/net/tun"); exit(1); }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) { perror(name); exit(1); }
    return fd;
}

static void enqueue(struct direction *d, const unsigned char *data, size_t len, double now) {
    d->packets++;
    d->bytes += len;
    if (d->queued + len > d->queue_bytes) {
        d->queue_drops++;
        return;
    }
    if (!d->queue.head && d->link_free < now)
        d->link_free = now; /* the link was idle: this packet starts at once */
    struct packet *p = malloc(sizeof *p + len);
    if (!p) { perror("malloc"); exit(1); }
    memcpy(p->data, data, len);
    p->len = len;
    push(&d->queue, p);
    d->queued += len;
}

static void pump(struct direction *d, double now) {
    while (d->queue.head && d->link_free <= now) {
        struct packet *p = pop(&d->queue);
        d->queued -= p->len;
        d->link_free += p->len * 8.0 / d->rate_bps;
        if (uniform() < d->loss) {
            d->random_drops++;
            free(p);
            continue;
        }
        p->due = d->link_free + d->delay_s;
        push(&d->in_flight, p);
    }
}

static void deliver(struct direction *d, double now) {
    while (d->in_flight.head && d->in_flight.head->due <= now) {
        struct packet *p = pop(&d->in_flight);
        if (write(d->out_fd, p->data, p->len) >= 0) d->delivered++;
        else if (errno == EAGAIN || errno == ENOBUFS) d->write_drops++;
        else d->down_drops++; /* the device is down (not yet moved and configured) */
        free(p);
    }
}

static double next_time(const struct direction *d) {
    double t = -1;
    if (d->in_flight.head) t = d->in_flight.head->due;
    if (d->queue.head && (t < 0 || d->link_free < t)) t = d->link_free;
    return t;
}

static void print_direction(const struct direction *d) {
    printf("\"%s\": {\"packets\": %llu, \"bytes\": %llu, \"queueDrops\": %llu, "
           "\"randomDrops\": %llu, \"delivered\": %llu, \"writeDrops\": %llu, "
           "\"downDrops\": %llu}", d->name, d->packets, d->bytes, d->queue_drops,
           d->random_drops, d->delivered, d->write_drops, d->down_drops);
}

static void print_counters(const struct direction *ab, const struct direction *ba,
                           long long queue_bytes) {
    printf("{");
    print_direction(ab);
    printf(", ");
    print_direction(ba);
    if (queue_bytes >= 0) printf(", \"queueBytes\": %lld", queue_bytes);
    printf("}\n");
    fflush(stdout);
}

int main(int argc, char **argv) {
    const char *tun_a = "jsbA0", *tun_b = "jsbB0";
    double rate_mbps = 100, delay_ms = 0, loss = 0, queue_bdp = 1;
    unsigned long long seed = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--tun-a")) tun_a = v;
        else if (!strcmp(k, "--tun-b")) tun_b = v;
        else if (!strcmp(k, "--rate-mbps")) rate_mbps = atof(v);
        else if (!strcmp(k, "--delay-ms")) delay_ms = atof(v);
        else if (!strcmp(k, "--loss")) loss = atof(v);
        else if (!strcmp(k, "--queue-bdp")) queue_bdp = atof(v);
        else if (!strcmp(k, "--seed")) seed = strtoull(v, NULL, 10);
        else { fprintf(stderr, "unknown option %s\n", k); return 2; }
    }
    if ((argc - 1) % 2 || rate_mbps <= 0 || delay_ms < 0 || loss < 0 || loss > 1) {
        fprintf(stderr, "usage: see the comment at the top of linkemu.c\n");
        return 2;
    }
    rng_state = seed;
    double rate = rate_mbps * 1e6, delay = delay_ms / 1000;
    double bdp_s = 2 * delay > 0.001 ? 2 * delay : 0.001;
    size_t queue = (size_t)(rate / 8 * bdp_s * queue_bdp);
    if (queue < 64 * 1024) queue = 64 * 1024;
    int fd_a = open_tun(tun_a), fd_b = open_tun(tun_b);
    struct direction ab = {.name = "aToB", .out_fd = fd_b, .rate_bps = rate,
                           .delay_s = delay, .loss = loss, .queue_bytes = queue};
    struct direction ba = ab;
    ba.name = "bToA";
    ba.out_fd = fd_a;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_report;
    sigaction(SIGUSR1, &sa, NULL);
    printf("ready\n");
    fflush(stdout);

    static unsigned char buffer[MAX_PACKET];
    struct pollfd fds[2] = {{fd_a, POLLIN, 0}, {fd_b, POLLIN, 0}};
    struct direction *from[2] = {&ab, &ba};
    while (!stop) {
        double now = now_s(), wake = -1;
        for (int i = 0; i < 2; i++) {
            double t = next_time(from[i]);
            if (t >= 0 && (wake < 0 || t < wake)) wake = t;
        }
        double timeout = wake < 0 ? 0.1 : wake - now;
        if (timeout > 0.1) timeout = 0.1;
        if (timeout < 0) timeout = 0;
        struct timespec ts = {(time_t)timeout, (long)((timeout - (time_t)timeout) * 1e9)};
        int ready = ppoll(fds, 2, &ts, NULL);
        if (ready < 0 && errno != EINTR) { perror("ppoll"); return 1; }
        for (int i = 0; ready > 0 && i < 2; i++) {
            if (!(fds[i].revents & POLLIN)) continue;
            for (int n = 0; n < 256; n++) {
                ssize_t len = read(fds[i].fd, buffer, sizeof buffer);
                if (len <= 0) break;
                /* each packet's own arrival time: one read late in a batch must not
                 * start earlier than it arrived (that would shorten the path) */
                enqueue(from[i], buffer, (size_t)len, now_s());
            }
        }
        now = now_s();
        for (int i = 0; i < 2; i++) {
            pump(from[i], now);
            deliver(from[i], now);
        }
        if (report) {
            report = 0;
            print_counters(&ab, &ba, -1);
        }
    }
    print_counters(&ab, &ba, (long long)queue);
    return 0;
}
