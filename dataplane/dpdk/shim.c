/* See shim.h. */
#include <errno.h>
#include <stddef.h>
#include <string.h>

#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>

#include "shim.h"

/* The offsets the port uses in Rust (shim.h), with the types it reads and writes there. */
#define LB_FIELD(name, field, type)                                                        \
	_Static_assert(offsetof(struct rte_mbuf, field) == (name) &&                           \
			       sizeof(((struct rte_mbuf *)0)->field) == sizeof(type),          \
		       #field " is not where the dpdk port reads it")
LB_FIELD(LB_MBUF_BUF_ADDR, buf_addr, void *);
LB_FIELD(LB_MBUF_DATA_OFF, data_off, uint16_t);
LB_FIELD(LB_MBUF_NB_SEGS, nb_segs, uint16_t);
LB_FIELD(LB_MBUF_PKT_LEN, pkt_len, uint32_t);
LB_FIELD(LB_MBUF_DATA_LEN, data_len, uint16_t);
LB_FIELD(LB_MBUF_BUF_LEN, buf_len, uint16_t);

int lb_errno(void)
{
	return rte_errno;
}

int lb_thread_register(void)
{
	if (rte_lcore_id() != LCORE_ID_ANY)
		return 0;
	if (rte_thread_register() != 0)
		return -rte_errno;
	return 0;
}

/* Configures, sets up and starts `port` with `conf` (see lb_port_start). */
static int port_setup(uint16_t port, uint16_t queues, uint16_t *rx_desc, uint16_t *tx_desc,
		      uint16_t mtu, struct rte_mempool *pool, const struct rte_eth_conf *conf)
{
	int socket, ret;
	uint16_t q;

	ret = rte_eth_dev_configure(port, queues, queues, conf);
	if (ret != 0)
		return ret;
	if (mtu != 0) {
		/* Some drivers take the MTU only this way; those without the call keep the
		 * configured one. */
		ret = rte_eth_dev_set_mtu(port, mtu);
		if (ret != 0 && ret != -ENOTSUP)
			return ret;
	}
	ret = rte_eth_dev_adjust_nb_rx_tx_desc(port, rx_desc, tx_desc);
	if (ret != 0)
		return ret;
	socket = rte_eth_dev_socket_id(port);
	if (socket < 0)
		socket = SOCKET_ID_ANY;
	for (q = 0; q < queues; q++) {
		ret = rte_eth_rx_queue_setup(port, q, *rx_desc, socket, NULL, pool);
		if (ret != 0)
			return ret;
		ret = rte_eth_tx_queue_setup(port, q, *tx_desc, socket, NULL);
		if (ret != 0)
			return ret;
	}
	return rte_eth_dev_start(port);
}

int lb_port_start(uint16_t port, uint16_t queues, uint16_t rx_desc, uint16_t tx_desc,
		  uint16_t mtu, struct rte_mempool *pool, struct lb_port_info *info)
{
	struct rte_eth_dev_info dev;
	struct rte_eth_conf conf;
	struct rte_ether_addr mac;
	uint16_t rxd = rx_desc, txd = tx_desc;
	int ret;

	memset(info, 0, sizeof(*info));
	ret = rte_eth_dev_info_get(port, &dev);
	if (ret != 0)
		return ret;
	/* The device's limit is the smaller of its MTU and its largest frame less the Ethernet
	 * header and FCS (memif, say, states only the frame). */
	uint32_t max_mtu = dev.max_mtu;
	uint32_t overhead = RTE_ETHER_HDR_LEN + RTE_ETHER_CRC_LEN;
	if (dev.max_rx_pktlen > overhead && dev.max_rx_pktlen - overhead < max_mtu)
		max_mtu = dev.max_rx_pktlen - overhead;
	info->max_mtu = (uint16_t)max_mtu;
	if (queues > dev.max_rx_queues || queues > dev.max_tx_queues)
		return -EINVAL;
	if (mtu > max_mtu)
		return -ERANGE;
	memset(&conf, 0, sizeof(conf));
	/* Frames up to the MTU arrive in one mbuf: the pool's buffers are sized for it (0: the
	 * device's default). */
	if (mtu != 0)
		conf.rxmode.mtu = mtu;
	uint64_t hash = dev.flow_type_rss_offloads & (RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP);
	if (queues > 1 && hash != 0) {
		conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
		conf.rx_adv_conf.rss_conf.rss_hf = hash;
		info->rss = 1;
	}
	/* Receive interrupts where the driver has them, so an idle worker can sleep until a
	 * frame arrives; a driver that refuses them is set up again without. */
	conf.intr_conf.rxq = 1;
	ret = port_setup(port, queues, &rxd, &txd, mtu, pool, &conf);
	if (ret != 0) {
		(void)rte_eth_dev_stop(port);
		conf.intr_conf.rxq = 0;
		rxd = rx_desc;
		txd = tx_desc;
		ret = port_setup(port, queues, &rxd, &txd, mtu, pool, &conf);
		if (ret != 0)
			return ret;
	} else {
		info->rx_intr = 1;
	}
	/* Frames for our MAC arrive either way; promiscuous mode is only asked for (many virtual
	 * devices have no such mode and say so). */
	(void)rte_eth_promiscuous_enable(port);
	if (rte_eth_macaddr_get(port, &mac) == 0)
		memcpy(info->mac, mac.addr_bytes, 6);
	info->rx_desc = rxd;
	info->tx_desc = txd;
	if (dev.driver_name != NULL)
		snprintf(info->driver, sizeof(info->driver), "%s", dev.driver_name);
	return 0;
}

int lb_rx_intr_fd(uint16_t port, uint16_t queue)
{
	return rte_eth_dev_rx_intr_ctl_q_get_fd(port, queue);
}

int lb_rx_intr_enable(uint16_t port, uint16_t queue)
{
	return rte_eth_dev_rx_intr_enable(port, queue);
}

int lb_rx_intr_disable(uint16_t port, uint16_t queue)
{
	return rte_eth_dev_rx_intr_disable(port, queue);
}

int lb_link_up(uint16_t port)
{
	struct rte_eth_link link;

	memset(&link, 0, sizeof(link));
	if (rte_eth_link_get_nowait(port, &link) != 0)
		return 0;
	return link.link_status == RTE_ETH_LINK_UP;
}

uint16_t lb_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t lb_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_tx_burst(port, queue, pkts, n);
}

void lb_free_bulk(struct rte_mbuf **pkts, unsigned int n)
{
	rte_pktmbuf_free_bulk(pkts, n);
}

struct rte_mbuf *lb_alloc_copy(struct rte_mempool *pool, const uint8_t *data, uint16_t len)
{
	struct rte_mbuf *m = rte_pktmbuf_alloc(pool);
	if (m == NULL)
		return NULL;
	char *dst = rte_pktmbuf_append(m, len);
	if (dst == NULL) {
		rte_pktmbuf_free(m);
		return NULL;
	}
	memcpy(dst, data, len);
	return m;
}
