/* perf/udpgen.c: the UDP generator of perf/compare (which builds it with `cc -O2`).
 *
 * Sends 60-byte UDP frames (18 bytes of zero payload, as perf/compare's trafgen configuration)
 * from SRC to DST:PORT with FLOWS source ports 1024, 1025, ... on IFNAME, as fast as one core
 * allows. One connected UDP socket per source port; each send(2) carries SEGS payloads with
 * UDP_SEGMENT (UDP GSO), and IFNAME cuts it into SEGS frames in its own transmit: perf/compare
 * turns off its checksum offload and tx-udp-segmentation, so every frame leaves IFNAME as a
 * single frame with complete IPv4 and UDP checksums and no super-packet gets past it. The
 * sockets take turns, one send each. Per frame the kernel then does only the segmentation and
 * the device path; the syscall, socket, route and UDP work is paid once per SEGS frames, and the
 * frames of one send reach the receiving side in one softirq run (one wake-up of the receiving
 * core, not one per frame).
 *
 * Usage: udpgen [-s SEGS] [-p PPS] [-t SECONDS | -r ROUNDS] IFNAME SRC DST PORT FLOWS
 *   -s  frames per send, 1..64 (default 64; 64 is UDP_MAX_SEGMENTS before Linux 6.9)
 *   -p  offer PPS frames/s at most (sends paced by sleeping; default: as fast as it can)
 *   -t  stop after SECONDS (default: at SIGINT or SIGTERM)
 *   -r  stop after ROUNDS turns of every socket (ROUNDS x SEGS frames per flow)
 * SRC need not be an address of the namespace (IP_TRANSPARENT): perf/compare sends on a bridge
 * port. Prints "sent N" (frames handed to the kernel) at the end.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD 18   /* 14 + 20 + 8 + 18: 60-byte frames */
#define MAX_SEGS 64  /* UDP_MAX_SEGMENTS before Linux 6.9 */
#define SNDBUF (4 << 20)

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One connected UDP socket from SRC:sport to DST:port on IFNAME that sends GSO payloads. */
static int flow_socket(const char *ifname, struct in_addr src, struct in_addr dst, int sport,
                       int port) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0)
        die("socket");
    int one = 1, size = SNDBUF, gso = PAYLOAD;
    if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, ifname, (socklen_t)strlen(ifname)) < 0)
        die("SO_BINDTODEVICE");
    if (setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one)) < 0)
        die("IP_TRANSPARENT");
    /* The frames hold their socket's send buffer until the receiving side frees them: a large
     * one keeps send(2) from waiting while a forwarder's queue is full. */
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) < 0)
        die("SO_SNDBUFFORCE");
    if (setsockopt(fd, IPPROTO_UDP, UDP_SEGMENT, &gso, sizeof(gso)) < 0)
        die("UDP_SEGMENT");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr = src, .sin_port = htons(sport)};
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        die("bind");
    a.sin_addr = dst;
    a.sin_port = htons(port);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        die("connect");
    return fd;
}

int main(int argc, char **argv) {
    int segs = MAX_SEGS, opt;
    double seconds = 0, pps = 0;
    long rounds = 0;
    while ((opt = getopt(argc, argv, "s:p:t:r:")) != -1) {
        switch (opt) {
        case 's': segs = atoi(optarg); break;
        case 'p': pps = atof(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'r': rounds = atol(optarg); break;
        default: goto usage;
        }
    }
    if (argc - optind != 5)
        goto usage;
    const char *ifname = argv[optind];
    struct in_addr src, dst;
    int port = atoi(argv[optind + 3]), flows = atoi(argv[optind + 4]);
    if (inet_pton(AF_INET, argv[optind + 1], &src) != 1 ||
        inet_pton(AF_INET, argv[optind + 2], &dst) != 1 || port <= 0 || port > 65535 ||
        flows <= 0 || 1024 + flows > 65536 || segs < 1 || segs > MAX_SEGS || seconds < 0 ||
        rounds < 0 || pps < 0)
        goto usage;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: a waiting send returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    int *fds = calloc((size_t)flows, sizeof(int));
    if (!fds)
        die("calloc");
    for (int i = 0; i < flows; i++)
        fds[i] = flow_socket(ifname, src, dst, 1024 + i, port);

    static char buf[MAX_SEGS * PAYLOAD];
    size_t len = (size_t)segs * PAYLOAD;
    double start = now(), end = seconds > 0 ? start + seconds : 0;
    double gap = pps > 0 ? segs / pps : 0, next = start; /* pacing: one send per gap seconds */
    if (gap > 0)
        prctl(PR_SET_TIMERSLACK, 1UL); /* wake at the time asked for, not up to 50 us later */
    unsigned long long sent = 0;
    for (long round = 0; !stop && (rounds == 0 || round < rounds); round++) {
        for (int i = 0; i < flows && !stop; i++) {
            double t = now(); /* a vDSO call: tens of ns against the microseconds of a send */
            if (end > 0 && t >= end) {
                stop = 1;
                break;
            }
            if (gap > 0) {
                next += gap;
                double wait = next - t;
                if (wait > 0) {
                    struct timespec ts = {.tv_sec = (time_t)wait,
                                          .tv_nsec = (long)((wait - (double)(time_t)wait) * 1e9)};
                    nanosleep(&ts, NULL);
                } else if (wait < -0.01) {
                    next = now(); /* behind by more than 10 ms: do not make up for it in a burst */
                }
            }
            ssize_t n = send(fds[i], buf, len, 0);
            if (n == (ssize_t)len) {
                sent += (unsigned long long)segs;
            } else if (n < 0 && errno == EIO && segs > 1) {
                /* Before "udp: Allow GSO transmit from devices with no checksum offload"
                 * (Linux 6.10, 2024) UDP GSO needs checksum offload on IFNAME. */
                fprintf(stderr, "udpgen: this kernel refuses UDP GSO on %s without checksum "
                                "offload (fixed in Linux 6.10): use -s 1 or GEN=trafgen\n", ifname);
                return 1;
            } else if (n < 0 && errno != EINTR && errno != ENOBUFS && errno != ECONNREFUSED) {
                die("send"); /* ECONNREFUSED: an ICMP error came back; the next send goes */
            }
        }
    }
    printf("sent %llu\n", sent);
    return 0;

usage:
    fprintf(stderr, "usage: udpgen [-s SEGS 1..%d] [-p PPS] [-t SECONDS | -r ROUNDS] IFNAME SRC "
                    "DST PORT FLOWS\n", MAX_SEGS);
    return 2;
}
