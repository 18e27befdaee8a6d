/*
 * The DPDK calls the dpdk port makes, as plain functions: the burst functions and mbuf
 * accessors are static inline in DPDK's headers, so Rust cannot call them directly. Every
 * function works on a whole burst, so the hot path crosses the FFI boundary twice per burst
 * (receive, transmit) and never per packet; the mbuf fields a frame needs are read and written
 * in Rust at the offsets below.
 */
#ifndef LB_DPDK_SHIM_H
#define LB_DPDK_SHIM_H

#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;

/* Byte offsets of the struct rte_mbuf fields the port reads and writes itself (shim.c checks
 * them against DPDK's header at compile time), so a burst's per-frame work needs no call into
 * C: the buffer (buf_addr, buf_len), the frame in it (data_off, data_len, pkt_len) and the
 * segment count. */
#define LB_MBUF_BUF_ADDR 0
#define LB_MBUF_DATA_OFF 16
#define LB_MBUF_NB_SEGS 20
#define LB_MBUF_PKT_LEN 36
#define LB_MBUF_DATA_LEN 40
#define LB_MBUF_BUF_LEN 54

/* What lb_port_start found out about the device. */
struct lb_port_info {
	uint8_t mac[6];
	/* Receive and transmit descriptors per queue, after the driver's adjustment. */
	uint16_t rx_desc;
	uint16_t tx_desc;
	/* 1 when the queues are spread by RSS, 0 with a single queue or no RSS support. */
	uint8_t rss;
	/* The driver's name ("net_memif", "net_ixgbe", ...), NUL-terminated. */
	char driver[32];
	/* The largest MTU the device takes (dev_info.max_mtu). */
	uint16_t max_mtu;
	/* 1 when the queues were set up with receive interrupts. */
	uint8_t rx_intr;
};

/* rte_errno of the calling thread. */
int lb_errno(void);

/* Registers the calling (non-EAL) thread with EAL so it gets an lcore id and with it a mempool
 * cache; a no-op for a thread that has one. 0 or a negative errno. */
int lb_thread_register(void);

/* Configures `port` with `queues` receive and transmit queues (RSS over IP/TCP/UDP where the
 * driver has it and queues > 1), receive interrupts where the driver takes them
 * (info->rx_intr), and, when `mtu` is not 0, that MTU (-ERANGE, with
 * info->max_mtu set, when the device takes less), sets them up with `rx_desc`/`tx_desc`
 * descriptors and mbufs from `pool`, enables promiscuous mode where the driver allows, and
 * starts it. 0 or a negative errno. */
int lb_port_start(uint16_t port, uint16_t queues, uint16_t rx_desc, uint16_t tx_desc,
		  uint16_t mtu, struct rte_mempool *pool, struct lb_port_info *info);

/* The file descriptor that becomes readable when queue `queue` receives while its interrupt
 * is enabled (an eventfd), or a negative errno. */
int lb_rx_intr_fd(uint16_t port, uint16_t queue);

/* Enables and disables queue `queue`'s receive interrupt. 0 or a negative errno. */
int lb_rx_intr_enable(uint16_t port, uint16_t queue);
int lb_rx_intr_disable(uint16_t port, uint16_t queue);

/* 1 when the link is up, 0 when down or unknown (never waits). */
int lb_link_up(uint16_t port);

/* Receives up to `n` frames from queue `queue` into `pkts`; returns how many. */
uint16_t lb_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);

/* Transmits mbufs whose bounds are set; returns how many the driver took (those now belong to
 * it). */
uint16_t lb_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);

/* Returns `n` mbufs to their pool. */
void lb_free_bulk(struct rte_mbuf **pkts, unsigned int n);

/* An mbuf from `pool` holding a copy of `data`, or NULL (pool empty, frame too long). */
struct rte_mbuf *lb_alloc_copy(struct rte_mempool *pool, const uint8_t *data, uint16_t len);

#endif
