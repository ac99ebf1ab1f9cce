/* ipftrace-exporter: the in-kernel half.
 *
 * program.py renders this file by filling its splice points, the comment lines naming one (each appears once;
 * program.SPLICE_POINTS lists them in order):
 *   settings: IPFT_NUM_PROBES, IPFT_NUM_FLOWS, IPFT_MAX_INFLIGHT, IPFT_RINGBUF_PAGES, IPFT_MAX_DROP_KEYS,
 *     IPFT_WAKEUP_EVERY, IPFT_CLONED_BIT and IPFT_SAMPLED() (the per-packet sampling decision: 1, 0, or a prandom
 *     comparison); the modules' compile check (modules/check.py) defines IPFT_MODULE_CHECK here instead;
 *   functions: with kprobes, IPFT_HAS_FUNCTIONS, IPFT_FUNC_SLOTS and how a kprobe entry point learns its
 *     function's address (IPFT_KPROBE_IP(ctx)); right after the settings;
 *   module_declarations, module_match, module_data: the modules' C (modules/loader.py), in and before the hooks
 *     ipft_module_match(skb, t) (0 rejects) and ipft_module_data(skb, t, data) (fills 64 bytes);
 *   flows: the flow filter (numbers only, flows.py): ipft_match_headers(t) (first flow whose header keys match),
 *     ipft_flow_headers(flow, t) (a tracked packet's headers still match its flow), ipft_match_first(t, skb, dev,
 *     data, l3) (first flow whose keys, pcap filter and device/netns match, at first match), ipft_match_where();
 *   entries: one small entry point per probe (per skb position for kernel functions) that calls ipft_handle()
 *     (tracepoints), ipft_kfunc() (kfunc, its probe from ipft_kfunc_probe()) or ipft_function() (kprobes: ipft_hit()
 *     looks the function up by its address only for a packet it may trace).
 *
 * A packet is tracked from the first probe where its headers match a flow until it is freed: later probes
 * look the skb address up instead of parsing again (headers are not parseable everywhere). Counters are
 * exact and kept in per-CPU maps; only sampled packets' events go through the ring buffer.
 */

/* @ipft:settings */
/* @ipft:functions */

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define IPFT_ROLE_STEP 0
#define IPFT_ROLE_CONSUME 1
#define IPFT_ROLE_DROP 2
#define IPFT_ROLE_EGRESS 3
/* a function that runs inside a free (skb_release_data, kfree_skbmem, a destructor...), or one that writes the
 * headers of the skb it is given (udp_send_skb: at its entry they are leftovers): a step of a tracked skb; on any
 * other skb it is the free of a packet that just ended, a packet whose headers are not there yet, or never ours:
 * never a packet's start (ProbeRole.RELEASE and PREPARE) */
#define IPFT_ROLE_NO_START 4

/* What kind of tracepoint a probe is (0 for kernel functions): a packet read by a socket (skb_copy_datagram_iovec)
 * is at its end; the same skb at any other tracepoint but a free or another read is a new packet in it (the read
 * one was freed where no tracepoint sees it: __consume_stateless_skb, a deferred free...), however alike the two
 * look (IPv6 UDP segments of one size, whose payload sits outside the linear buffer, all fingerprint alike: no
 * identification, and no payload word: ipft_payload_word). Function probes run inside recvmsg after the read, so
 * the rule holds for tracepoints only. */
#define IPFT_TP_NONE 0
#define IPFT_TP_OTHER 1
#define IPFT_TP_SOCKET_READ 2

#define IPFT_FLAG_TUPLE 1 /* first event of a packet: headers parsed and matched here */
#define IPFT_FLAG_SAMPLED 2
#define IPFT_FLAG_GAP 4 /* an earlier event of this skb was lost (ring buffer full) */
#define IPFT_FLAG_PREV_LOST 8 /* first event: the previous traced packet at this address lost its end event */
#define IPFT_FLAG_LEFT 16 /* an egress probe on a device with a parent (hardware): the packet left the host */
#define IPFT_FLAG_REWRITE 32 /* the packet's headers were rewritten (NAT) before this probe: the event has the new ones */
#define IPFT_FLAG_CLONE 64 /* first event of an skb that shares its data buffer with a traced packet (`parent`; 0:
                            * a packet not seen yet, as a neighbour probe's copy of a packet waiting for ARP/ND) */
#define IPFT_FLAG_ADOPT 128 /* first event of a packet whose clone (`parent`) ended before the packet was seen */
#define IPFT_FLAG_FRAGMENT 256 /* first event of an IP fragment of a traced datagram (`parent`: its first seen skb) */
#define IPFT_FLAG_ENCAP 512 /* the packet was encapsulated (tunnel) before this probe: the event has the outer headers */
#define IPFT_FLAG_SEGMENT 1024 /* first event of a GSO segment of a traced TCP or UDP packet (`parent`: that packet's skb) */
#define IPFT_FLAG_FOLLOWS 2048 /* with IPFT_FLAG_CLONE, parent 0: another clone ending before its packet was seen,
                                * after an earlier one (`parent` holds that one: the neighbour probe's next copy) */
/* flags >> IPFT_LOST_SHIFT: how many of this skb's events were lost before this one (ring buffer full; at most 255) */
#define IPFT_LOST_SHIFT 16

#define IPFT_CLONE_WINDOW_NS 1000000000ULL
/* How long after a clone that ended before its packet was seen (a neighbour probe's copy) the packet, or the next
 * copy, may come: the neighbour probes every retrans_time (1 s by default) with a copy of the last packet queued,
 * and when it never answers drops the queue one retrans_time after the last probe, about 3 s after the first
 * (timer slack on top): a packet queued first, whose only copy was the first probe's, comes 3 s after it. */
#define IPFT_ORPHAN_WINDOW_NS 5000000000ULL

#define IPFT_STAT_EVENTS 0
#define IPFT_STAT_LOST 1
#define IPFT_STAT_MATCHED 2
#define IPFT_STAT_TRACK_FULL 3

/* Why a matching packet was not traced (ipftrace_packets_untraced_total), indexed with its flow. */
#define IPFT_UNTRACED_SAMPLED_OUT 0
#define IPFT_UNTRACED_RING_FULL 1
#define IPFT_UNTRACED_REASONS 2

#define IPFT_ETH_P_IP 0x0800
#define IPFT_ETH_P_IPV6 0x86DD
#define IPFT_MAX_EXT_HEADERS 6

struct ipft_tuple {
    u32 saddr[4];
    u32 daddr[4];
    u16 sport;
    u16 dport;
    u8 ipversion;
    u8 l4proto;
    u8 has_ports;
    u8 l4_read; /* IPv6: its L4 header was read in full, at l4_offset from the IP header */
    u32 fp; /* fingerprint of this packet among packets of its flow (0: unknown), see ipft_l4_word() */
    u16 udp_len; /* with l4_read, or UDP read with its ports (ipft_ports_from): the UDP (or UDP-Lite) length field */
    u16 ip_id; /* IPv4: the identification field (fragments of one datagram share it) */
    u32 datagram_id; /* with a fragment state: IPv4's identification, or an IPv6 fragment header's */
    u16 l4_offset; /* with l4_read: the L4 header's offset from the IP header */
    u8 fragment; /* IPFT_FRAGMENT_* */
    u8 seq_read; /* TCP: tcp_seq was read */
    u32 tcp_seq;
};

#define IPFT_FRAGMENT_NONE 0 /* a whole datagram: IPv4 sent with DF, or IPv6 without a fragment header */
#define IPFT_FRAGMENT_MAY 1 /* a whole IPv4 datagram without DF: it may be fragmented on its way */
#define IPFT_FRAGMENT_FIRST 2 /* the first fragment (offset 0, more fragments) */
#define IPFT_FRAGMENT_LATER 3 /* a later fragment (no L4 header) */

/* Mirrors events.py RECORD. */
struct ipft_event {
    u64 ts;
    u64 skb;
    u64 location;
    u32 probe_id;
    u32 cpu;
    u32 len;
    u32 ifindex;
    u32 reason;
    u16 flow_id;
    u8 ipversion;
    u8 l4proto;
    u8 saddr[16];
    u8 daddr[16];
    u16 sport;
    u16 dport;
    u32 flags;
    u8 data[64];
    u64 parent; /* with IPFT_FLAG_CLONE: the skb this one shares its data buffer with (the packet it belongs to) */
    u64 parent_ts; /* with `parent`: that skb's first event's time (0: unknown), not a later packet's there */
};

/* The packet that was first matched in a data buffer: a later skb first seen with the same buffer and fingerprint
 * within IPFT_CLONE_WINDOW_NS is a clone of it (skb_clone shares the buffer: a raw socket's copy of a ping reply,
 * a packet socket's, a multicast or bridge flood's), part of the same packet. */
struct ipft_buffer_owner {
    u64 skb;
    u64 ts;
    u32 fp;
    u16 flow_id;
    u8 sampled;
    u8 orphan; /* `skb` is a clone that ended before its packet was seen: the packet adopts it when it is */
};

/* The datagram a fragment belongs to: IP version, source, destination, protocol and identification (IPv4's, or
 * the IPv6 fragment header's). */
struct ipft_datagram_key {
    u32 saddr[4];
    u32 daddr[4];
    u32 id;
    u8 protocol;
    u8 ipversion; /* 0: the packet is no datagram that is or may become fragments */
    u8 pad[2];
};

/* The skb a datagram (a DF-clear packet or a fragment) was first seen in: its other fragments are child paths. */
struct ipft_datagram {
    u64 skb;
    u64 ts;
    u16 flow_id;
    u8 sampled;
    u8 ts_first; /* `ts` is the time of the skb's first event (it was noted there) */
    u8 pad[4];
};

/* A TCP or UDP packet the kernel will cut into segments (GSO: skb_segment makes new skbs and buffers), by its
 * flow's addresses and ports (ipft_datagram_key, `id` the ports): a new skb of that flow, within a second and while
 * segments are still to come, is one of its segments when (TCP) its sequence number is in the packet's range, or
 * (UDP) its payload is at most gso_size and (IPv4) its identification one of the packet's segments' (each segment
 * takes the next one, from the packet's own). */
struct ipft_segmented {
    u64 skb;
    u64 ts; /* the packet's first event */
    u32 seq; /* TCP: its first sequence number; UDP: its IPv4 identification (0 with IPv6), the first segment's */
    u32 span; /* TCP: the range is [seq, seq + gso_size * gso_segs); UDP: gso_segs identifications from seq */
    u16 segs_left;
    u16 flow_id;
    u8 sampled;
    u8 pad;
    u16 gso_size;
};

struct ipft_track {
    u64 head; /* skb->head: a different buffer at the same address is another packet, unless the packet moved there
               * (pskb_expand_head of a cloned skb, before NAT writes its headers: see ipft_hit) */
    u32 flow_id;
    u8 sampled;
    u8 lost; /* events of this skb lost so far (ring buffer full), at most 255 */
    u16 protocol; /* skb->protocol when first matched (host order, 0 if unset) */
    u32 fp; /* the packet's fingerprint when first matched: another one at the same address is another packet */
    u32 tuple_hash; /* a hash of its current headers: a change with the same buffer and fingerprint is a rewrite */
    u32 outer_hash; /* once encapsulated (a tunnel's headers pushed before it): a hash of the outer headers */
    u8 read; /* read by a socket (seen at the skb_copy_datagram_iovec tracepoint) */
    u8 payload_fp; /* its fingerprint holds the payload word (the first payload bytes were in the linear data when
                    * first matched): later probes add it only then, so a payload pulled into the linear data on
                    * the way (skb_condense, a device without scatter-gather) leaves the packet's fingerprint alone */
    u8 pad[2];
};

struct ipft_drop_key {
    u64 location;
    u32 flow_id;
    u32 reason;
};

/* What C reads kernel memory with, here and in modules (modules/base.py documents IPFT_MOD_READ and
 * IPFT_MOD_MEMBER for them). */
#define IPFT_MOD_READ(dst, ptr) bpf_probe_read_kernel(&(dst), sizeof(dst), (ptr))
/* Copy member `member` of the `type` at ptr into dst (offsets from the kernel's own layout). */
#define IPFT_MOD_MEMBER(dst, ptr, type, member) \
    bpf_probe_read_kernel(&(dst), sizeof(dst), (char *)(ptr) + __builtin_offsetof(type, member))
#define IPFT_READ(dst, ptr) IPFT_MOD_READ(dst, ptr)
#define IPFT_SKB_FIELD(dst, skb, field) IPFT_MOD_MEMBER(dst, skb, struct sk_buff, field)

/* Modules' types and helpers, then the two hooks that call theirs: run when a packet first matches a flow (0
 * rejects it) and on every event of a traced packet (its 64 bytes of custom data, zeroed). */
/* @ipft:module_declarations */
static __always_inline int ipft_module_match(struct sk_buff *skb, const struct ipft_tuple *t)
{
/* @ipft:module_match */
    return 1;
}

static __always_inline void ipft_module_data(struct sk_buff *skb, const struct ipft_tuple *t, u8 *data)
{
/* @ipft:module_data */
}

/* The modules' compile check stops here: the structs and the modules' hooks, no maps. */
#ifndef IPFT_MODULE_CHECK

/* @ipft:flows */

BPF_RINGBUF_OUTPUT(events, IPFT_RINGBUF_PAGES);
BPF_TABLE("lru_hash", u64, struct ipft_track, tracked, IPFT_MAX_INFLIGHT);
/* skb addresses whose traced packet ended (freed, egress) while the ring buffer was full: the next packet traced
 * at the address says so in its first event, and user space ends the old path as truncated. */
BPF_TABLE("lru_hash", u64, u8, ipft_lost_ends, 4096);
BPF_PERCPU_ARRAY(hits, u64, IPFT_NUM_FLOWS * IPFT_NUM_PROBES);
BPF_PERCPU_HASH(drops, struct ipft_drop_key, u64, IPFT_MAX_DROP_KEYS);
BPF_PERCPU_ARRAY(stats, u64, 4);
BPF_PERCPU_ARRAY(untraced, u64, IPFT_NUM_FLOWS * IPFT_UNTRACED_REASONS);
BPF_PERCPU_ARRAY(matched, u64, IPFT_NUM_FLOWS); /* packets matched, by flow (ipftrace_packets_matched_total) */
/* Set by user space once every probe is attached: until then no packet starts being traced, so a packet in flight
 * while the probes attach one by one (seconds for hundreds of kprobes) is not traced through some of them only. */
BPF_ARRAY(ipft_armed, u32, 1);
/* A counting filter of the tracked skb addresses: a bucket per address hash, incremented when an address starts
 * being tracked and decremented when it is forgotten. A packet whose headers match no flow is looked up in
 * `tracked` only when its bucket is non-zero (it may be a tracked packet whose headers were rewritten, by NAT):
 * the common case on a busy node, other traffic, costs one array read instead of a hash lookup. An entry the LRU
 * evicts leaves its bucket high: that only costs the lookup for the addresses that share it. */
#define IPFT_TRACKED_BUCKETS 16384
BPF_ARRAY(ipft_tracked_filter, u32, IPFT_TRACKED_BUCKETS);
BPF_TABLE("lru_hash", u64, struct ipft_buffer_owner, ipft_buffers, IPFT_MAX_INFLIGHT);
BPF_TABLE("lru_hash", struct ipft_datagram_key, struct ipft_datagram, ipft_datagrams, 16384);
BPF_TABLE("lru_hash", struct ipft_datagram_key, struct ipft_segmented, ipft_segmented, 4096);

static __always_inline void ipft_stat(u32 index)
{
    u64 *value = stats.lookup(&index);
    if (value)
        *value += 1;
}

static __always_inline void ipft_matched(u32 flow_id)
{
    u64 *value = matched.lookup(&flow_id);
    if (value)
        *value += 1;
    ipft_stat(IPFT_STAT_MATCHED);
}

static __always_inline void ipft_untraced(u32 flow_id, u32 reason)
{
    u32 slot = flow_id * IPFT_UNTRACED_REASONS + reason;
    u64 *value = untraced.lookup(&slot);
    if (value)
        *value += 1;
}

/* The sk_buff fields every probe reads (protocol, network_header, tail, head, data) sit together in every kernel
 * since 4.x: they are read with one bpf_probe_read_kernel() of the span that covers them (offsets from the
 * running kernel's BTF, so the span is a compile-time constant), instead of one call per field. */
#define IPFT_OFF(field) __builtin_offsetof(struct sk_buff, field)
#define IPFT_END(field) (IPFT_OFF(field) + sizeof(((struct sk_buff *)0)->field))
#define IPFT_MIN(a, b) ((a) < (b) ? (a) : (b))
#define IPFT_MAX(a, b) ((a) > (b) ? (a) : (b))
#define IPFT_HOT_START IPFT_MIN(IPFT_MIN(IPFT_MIN(IPFT_OFF(protocol), IPFT_OFF(network_header)), IPFT_OFF(tail)), \
                                IPFT_MIN(IPFT_OFF(head), IPFT_OFF(data)))
#define IPFT_HOT_END IPFT_MAX(IPFT_MAX(IPFT_MAX(IPFT_END(protocol), IPFT_END(network_header)), IPFT_END(tail)), \
                              IPFT_MAX(IPFT_END(head), IPFT_END(data)))
#define IPFT_HOT_SIZE 64
#define IPFT_HOT_GET(dst, hot, field) \
    __builtin_memcpy(&(dst), (hot) + IPFT_OFF(field) - IPFT_HOT_START, sizeof(dst))

struct ipft_skb {
    unsigned char *head;
    unsigned char *data;
    u16 network_header;
    u16 protocol; /* host order */
    u32 tail; /* the end of the linear data, from head (skb->tail): bytes past it are not the packet's */
};

/* skb->tail and skb->end are offsets from head on 64-bit kernels (NET_SKBUFF_DATA_USES_OFFSET), pointers
 * elsewhere. */
static __always_inline unsigned char *ipft_skb_pointer(unsigned char *head, sk_buff_data_t value)
{
    return __builtin_types_compatible_p(sk_buff_data_t, unsigned char *) ? (unsigned char *)(unsigned long)value
                                                                         : head + (unsigned long)value;
}

static __always_inline int ipft_skb_read(struct sk_buff *skb, struct ipft_skb *out)
{
    sk_buff_data_t tail = 0;
    if (IPFT_HOT_END - IPFT_HOT_START <= IPFT_HOT_SIZE) {
        u8 hot[IPFT_HOT_SIZE];
        if (bpf_probe_read_kernel(hot, IPFT_HOT_END - IPFT_HOT_START, (char *)skb + IPFT_HOT_START) < 0)
            return -1;
        IPFT_HOT_GET(tail, hot, tail);
        IPFT_HOT_GET(out->head, hot, head);
        IPFT_HOT_GET(out->data, hot, data);
        IPFT_HOT_GET(out->network_header, hot, network_header);
        IPFT_HOT_GET(out->protocol, hot, protocol);
    } else { /* a kernel with these fields far apart: one read each */
        IPFT_SKB_FIELD(tail, skb, tail);
        IPFT_SKB_FIELD(out->head, skb, head);
        IPFT_SKB_FIELD(out->data, skb, data);
        IPFT_SKB_FIELD(out->network_header, skb, network_header);
        IPFT_SKB_FIELD(out->protocol, skb, protocol);
    }
    out->protocol = bpf_ntohs(out->protocol);
    out->tail = ipft_skb_pointer(out->head, tail) - out->head;
    return 0;
}

/* The first bytes at the network header, read at once: an IPv4 header without options or an IPv6 header
 * without extension headers, followed by the first 8 bytes of the L4 header. */
#define IPFT_L3_READ 48

/* Words that differ between packets of one flow and stay the same along one packet's path (NAT and TTL do not
 * touch them): TCP's sequence number, UDP's length, ICMP's echo sequence (NAT rewrites the echo id), and with
 * IPv4 the IP id (ipft_parse_ipv4), with IPv6 UDP the first payload bytes (ipft_payload_word). Packets freed where
 * no probe sees it (a UDP datagram read by recvmsg, TCP segments merged in the receive queue) leave their skb
 * address and often their data buffer to the next packet; the fingerprint tells the two apart. */
static __always_inline u32 ipft_l4_word(u8 l4proto, const u8 *l4)
{
    if (l4proto == 6)
        return ((u32)l4[4] << 24) | ((u32)l4[5] << 16) | ((u32)l4[6] << 8) | l4[7];
    if (l4proto == 1 || l4proto == 58) /* the echo sequence: NAT rewrites the echo id */
        return ((u32)l4[6] << 8) | l4[7];
    if (l4proto == 17 || l4proto == 136)
        return ((u32)l4[4] << 8) | l4[5];
    return 0;
}

/* IPv6 has no IP id: UDP datagrams of one flow with the same length differ in their payload. Its first 32 bytes
 * after the UDP header, folded (protocol headers often start with bytes that stay the same across a flow: a QUIC
 * connection id, a fixed magic). Read only for packets that match a flow or are tracked, not for other traffic.
 * 0 when those bytes are not all in the linear data (a received packet whose payload sits in page fragments, a
 * GSO packet or segment): what lies past skb->tail is no part of the packet (often skb_shared_info, which changes
 * along the path: a clone, GRO, segmentation), so reading it would make one packet look like two. */
static __always_inline u32 ipft_payload_word(u8 l4proto, u16 udp_len, unsigned char *payload_start,
                                             unsigned char *linear_end)
{
    u32 words[8] = {};
    if ((l4proto != 17 && l4proto != 136) || udp_len <= 8)
        return 0;
    u32 payload = udp_len - 8, hash = 2166136261u;
    u32 size = payload < sizeof(words) ? payload : sizeof(words);
    if (payload_start + size > linear_end)
        return 0;
    /* only the datagram's bytes, the rest of `words` left zero: what lies past its end may change on the way (one
     * read of the size, not a mask per word: the verifier walks no branch per word) */
    if (bpf_probe_read_kernel(words, size, payload_start) < 0)
        return 0;
#pragma unroll
    for (int i = 0; i < 8; i++)
        hash = (hash ^ words[i]) * 16777619u;
    return hash;
}

/* A hash of the headers a flow matches on (addresses, protocol, ports): tells a rewritten packet (NAT) from one
 * whose headers are unchanged. */
static __always_inline u32 ipft_tuple_hash(const struct ipft_tuple *t)
{
    u32 hash = ((u32)t->ipversion << 8) | t->l4proto;
#pragma unroll
    for (int i = 0; i < 4; i++)
        hash = (hash ^ t->saddr[i]) * 16777619u ^ t->daddr[i] * 2654435761u;
    return (hash ^ (((u32)t->sport << 16) | t->dport)) * 16777619u;
}

/* The skb's address as a number to hash, the same on every entry point of a program (a kfunc program also has the
 * free tracepoints, where a packet tracked at a kfunc ends). Tracepoints and kprobes have it as a number already;
 * fentry's and tp_btf's skb (`typed`) is a BTF-typed pointer, on which the verifier allows no shifts: its value is
 * copied out of the stack with bpf_probe_read_kernel, after which the verifier knows it as a plain number. */
static __always_inline u64 ipft_skb_number(struct sk_buff *skb, int typed)
{
    if (!typed)
        return (u64)skb;
    u64 number = 0;
    struct sk_buff *spilled = skb;
    bpf_probe_read_kernel(&number, sizeof(number), &spilled);
    return number;
}

/* The filter's bucket of a tracked skb, by its address (ipft_skb_number): a packet keeps its skb to its end,
 * though not always its data buffer (pskb_expand_head moves it to a new one). */
static __always_inline u32 *ipft_filter_bucket(u64 number)
{
    u32 bucket = (u32)((number >> 8) ^ (number >> 20)) & (IPFT_TRACKED_BUCKETS - 1);
    return ipft_tracked_filter.lookup(&bucket);
}

static __always_inline int ipft_maybe_tracked(u64 number)
{
    u32 *count = ipft_filter_bucket(number);
    return !count || *count;
}

static __always_inline void ipft_start_tracking(u64 *key, u64 number, struct ipft_track *fresh)
{
    if (tracked.update(key, fresh) < 0) {
        ipft_stat(IPFT_STAT_TRACK_FULL);
        return;
    }
    u32 *count = ipft_filter_bucket(number);
    if (count)
        __sync_fetch_and_add(count, 1);
}

static __always_inline void ipft_forget(u64 *key, u64 number)
{
    if (tracked.delete(key) < 0)
        return; /* another CPU forgot it first */
    u32 *count = ipft_filter_bucket(number);
    if (count)
        __sync_fetch_and_add(count, (u32)-1);
}

static __always_inline int ipft_has_ports(u8 l4proto)
{
    return l4proto == 6 || l4proto == 17 || l4proto == 132 || l4proto == 136;
}

/* ICMP and ICMPv6 carry their type and code in the port fields (has_ports stays 0: port filters never match). */
#define IPFT_IS_ICMP(l4proto) ((l4proto) == 1 || (l4proto) == 58)

static __always_inline void ipft_ports(unsigned char *l4, struct ipft_tuple *t)
{
    u16 ports[2] = {};
    if (IPFT_IS_ICMP(t->l4proto)) {
        u8 icmp[2] = {};
        if (IPFT_READ(icmp, l4) == 0) {
            t->sport = icmp[0];
            t->dport = icmp[1];
        }
        return;
    }
    if (!ipft_has_ports(t->l4proto))
        return;
    if (IPFT_READ(ports, l4) < 0)
        return;
    t->sport = bpf_ntohs(ports[0]);
    t->dport = bpf_ntohs(ports[1]);
    t->has_ports = 1;
}

static __always_inline void ipft_ports_from(const u8 *raw, struct ipft_tuple *t)
{
    if (IPFT_IS_ICMP(t->l4proto)) {
        t->sport = raw[0];
        t->dport = raw[1];
        return;
    }
    if (!ipft_has_ports(t->l4proto))
        return;
    t->sport = ((u16)raw[0] << 8) | raw[1];
    t->dport = ((u16)raw[2] << 8) | raw[3];
    t->has_ports = 1;
    if (t->l4proto == 6) {
        t->tcp_seq = ((u32)raw[4] << 24) | ((u32)raw[5] << 16) | ((u32)raw[6] << 8) | raw[7];
        t->seq_read = 1;
    } else if (t->l4proto == 17) {
        t->udp_len = ((u16)raw[4] << 8) | raw[5];
    }
}

/* A UDP header whose length field is under 8 is one not written yet (probed at udp_send_skb's entry, which
 * writes it): such headers are not parsed, so a packet is first matched where its ports are there. */
#define IPFT_UDP_UNWRITTEN(l4proto, l4) ((l4proto) == 17 && (((u16)(l4)[4] << 8) | (l4)[5]) < 8)

/* An IPv4 packet's fingerprint: its identification and its L4 word (ipft_l4_word). */
static __always_inline u32 ipft_ipv4_fp(u16 id, u8 l4proto, const u8 *l4)
{
    return ((u32)id << 16) ^ ipft_l4_word(l4proto, l4);
}

/* The key of ipft_datagrams (`id`: the datagram's identification) and of ipft_segmented (`id`: the ports): the
 * packet's addresses, protocol and IP version. */
static __always_inline void ipft_datagram_key_of(const struct ipft_tuple *t, u32 id, struct ipft_datagram_key *key)
{
    __builtin_memcpy(key->saddr, t->saddr, sizeof(t->saddr));
    __builtin_memcpy(key->daddr, t->daddr, sizeof(t->daddr));
    key->id = id;
    key->protocol = t->l4proto;
    key->ipversion = t->ipversion;
}

/* skb_shinfo(skb)->gso_size and gso_segs (0 on a read error). */
_Static_assert(__builtin_offsetof(struct skb_shared_info, gso_segs)
               == __builtin_offsetof(struct skb_shared_info, gso_size) + 2, "gso_size and gso_segs are read at once");
static __always_inline void ipft_gso(struct sk_buff *skb, unsigned char *head, u16 *size, u16 *segs)
{
    sk_buff_data_t end = 0;
    u16 gso[2] = {};
    IPFT_SKB_FIELD(end, skb, end);
    unsigned char *shinfo = ipft_skb_pointer(head, end);
    if (end && IPFT_MOD_MEMBER(gso, shinfo, struct skb_shared_info, gso_size) == 0) {
        *size = gso[0];
        *segs = gso[1];
    }
}

/* Whether the skb belongs to a socket (skb->sk): a clone is made without one (a neighbour probe's copy keeps none),
 * while a packet a local socket sends keeps it to its free. (Before 6.11 `sk` shares its storage with
 * ip_defrag_offset, so a fragment being reassembled reads as owned: no branch that asks is taken for one.) */
static __always_inline int ipft_has_socket(struct sk_buff *skb)
{
    u64 sk = 0;
    IPFT_SKB_FIELD(sk, skb, sk);
    return sk != 0;
}

/* A packet a local socket sent, not yet received anywhere: it has its socket and no input device (skb_iif is set
 * on receive, so a received clone queued to a raw or packet socket, which has a socket too, does not pass). */
static __always_inline int ipft_sent_here(struct sk_buff *skb)
{
    int iif = 0;
    IPFT_SKB_FIELD(iif, skb, skb_iif);
    return !iif && ipft_has_socket(skb);
}

/* Whether another skb still shares this skb's data buffer (skb_shinfo(skb)->dataref counts the data's holders in
 * its low 16 bits; 1 when unknown): false for a packet whose clones were all freed. */
static __always_inline int ipft_buffer_shared(struct sk_buff *skb, unsigned char *head)
{
    sk_buff_data_t end = 0;
    atomic_t dataref = {};
    IPFT_SKB_FIELD(end, skb, end);
    unsigned char *shinfo = ipft_skb_pointer(head, end);
    if (!end || IPFT_MOD_MEMBER(dataref, shinfo, struct skb_shared_info, dataref) < 0)
        return 1;
    return (dataref.counter & 0xffff) != 1;
}

static __always_inline int ipft_parse_ipv4(unsigned char *l3, const u8 *raw, int full, struct ipft_tuple *t)
{
    const struct iphdr *iph = (const struct iphdr *)raw;
    if (iph->version != 4 || iph->ihl < 5)
        return 0;
    t->ipversion = 4;
    t->l4proto = iph->protocol;
    t->saddr[0] = iph->saddr;
    t->daddr[0] = iph->daddr;
    u16 frag_off = bpf_ntohs(iph->frag_off);
    t->ip_id = bpf_ntohs(iph->id);
    t->datagram_id = t->ip_id;
    if (frag_off & 0x1fff)
        t->fragment = IPFT_FRAGMENT_LATER;
    else if (frag_off & 0x2000)
        t->fragment = IPFT_FRAGMENT_FIRST;
    else if (!(frag_off & 0x4000))
        t->fragment = IPFT_FRAGMENT_MAY;
    if (t->fragment == IPFT_FRAGMENT_LATER)
        t->fp = (u32)t->ip_id << 16; /* no L4 header: the datagram's identification */
    if ((frag_off & 0x1fff) == 0) {
        if (iph->ihl == 5 && full) {
            if (IPFT_UDP_UNWRITTEN(t->l4proto, raw + 20))
                return 0;
            ipft_ports_from(raw + 20, t);
            t->fp = ipft_ipv4_fp(t->ip_id, t->l4proto, raw + 20);
        } else {
            ipft_ports(l3 + iph->ihl * 4, t);
        }
    }
    return 1;
}

/* An IPv6 packet's L4 header (protocol t->l4proto), its first 8 bytes read at `l4`, at `offset` from the IP
 * header: ports, fingerprint word and UDP length. 0: a UDP header not written yet (not parsed). */
static __always_inline int ipft_ipv6_l4(const u8 *l4, u16 offset, struct ipft_tuple *t)
{
    if (IPFT_UDP_UNWRITTEN(t->l4proto, l4))
        return 0;
    ipft_ports_from(l4, t);
    t->fp = ipft_l4_word(t->l4proto, l4);
    t->l4_read = 1;
    t->l4_offset = offset; /* a first fragment's fingerprint is its reassembled datagram's */
    t->udp_len = ((u16)l4[4] << 8) | l4[5];
    return 1;
}

static __always_inline int ipft_parse_ipv6(unsigned char *l3, const u8 *raw, int full, struct ipft_tuple *t)
{
    const struct ipv6hdr *ip6 = (const struct ipv6hdr *)raw;
    if (ip6->version != 6)
        return 0;
    t->ipversion = 6;
    __builtin_memcpy(t->saddr, &ip6->saddr, 16);
    __builtin_memcpy(t->daddr, &ip6->daddr, 16);
    u8 next = ip6->nexthdr;
    if (next != 0 && next != 43 && next != 60 && next != 51 && next != 44) { /* no extension header */
        t->l4proto = next;
        if (full)
            return ipft_ipv6_l4(raw + 40, 40, t);
        ipft_ports(l3 + sizeof(*ip6), t);
        return 1;
    }
    unsigned char *cursor = l3 + sizeof(*ip6);
#pragma unroll
    for (int i = 0; i < IPFT_MAX_EXT_HEADERS; i++) {
        u8 ext[8] = {}; /* every extension header is 8 bytes or more */
        if (next != 0 && next != 43 && next != 60 && next != 51 && next != 44)
            break;
        if (IPFT_READ(ext, cursor) < 0)
            return 0;
        if (next == 44) { /* fragment header: 8 bytes; offset and the more-fragments bit in ext[2..3], id in 4..7 */
            u16 offset = (ext[2] << 8) | ext[3];
            t->datagram_id = ((u32)ext[4] << 24) | ((u32)ext[5] << 16) | ((u32)ext[6] << 8) | ext[7];
            if (offset & 0xfff8)
                t->fragment = IPFT_FRAGMENT_LATER;
            else if (offset & 1)
                t->fragment = IPFT_FRAGMENT_FIRST;
            cursor += 8;
        } else if (next == 51) { /* AH: (len + 2) * 4 */
            cursor += (ext[1] + 2) * 4;
        } else { /* hop-by-hop, routing, destination options: (len + 1) * 8 */
            cursor += (ext[1] + 1) * 8;
        }
        next = ext[0];
    }
    t->l4proto = next;
    if (t->fragment == IPFT_FRAGMENT_LATER) {
        t->fp = t->datagram_id; /* no L4 header: the datagram's identification */
        return 1;
    }
    u8 l4_bytes[8] = {};
    if (IPFT_READ(l4_bytes, cursor) < 0) {
        ipft_ports(cursor, t); /* fewer than 8 bytes: the ports alone */
        return 1;
    }
    /* clang turns `l4 + 7` on an 8-aligned stack array into `l4 | 7`, which the verifier refuses on a pointer */
    const u8 *l4 = l4_bytes;
    asm volatile("" : "+r"(l4));
    return ipft_ipv6_l4(l4, cursor - l3, t);
}

/* Parse the packet's IP and L4 headers. from_data: the IP header is at skb->data at this probe (receive
 * entry points, before the network header offset is set); otherwise head + network_header is tried first, and
 * skb->data alone only when skb->protocol is set. The IP version must agree with skb->protocol when that is set. */
static __always_inline int ipft_parse(const struct ipft_skb *s, struct ipft_tuple *t, int from_data,
                                      unsigned char **l3_out)
{
    unsigned char *first = s->data, *second = 0;
    if (!from_data && s->network_header != (u16)~0U && s->network_header != 0) {
        first = s->head + s->network_header;
        second = s->data;
    } else if (!from_data && !s->protocol) {
        return 0; /* no network header and no protocol: not through the IP layer (a unix or netlink socket's data) */
    }
#pragma unroll
    for (int attempt = 0; attempt < 2; attempt++) {
        unsigned char *l3 = attempt == 0 ? first : second;
        u8 raw[IPFT_L3_READ] = {};
        int full = 1;
        if (!l3)
            return 0;
        *l3_out = l3; /* the IP header, for the flows' pcap filters */
        if (bpf_probe_read_kernel(raw, sizeof(raw), l3) < 0) {
            /* an unreadable page within IPFT_L3_READ bytes: the bare header, the ports read on their own */
            full = 0;
            if (bpf_probe_read_kernel(raw, 20, l3) < 0)
                return 0;
            if ((raw[0] >> 4) == 6 && bpf_probe_read_kernel(raw, 40, l3) < 0)
                return 0;
        }
        u8 version = raw[0] >> 4;
        if (version == 4 && (s->protocol == IPFT_ETH_P_IP || s->protocol == 0))
            return ipft_parse_ipv4(l3, raw, full, t);
        if (version == 6 && (s->protocol == IPFT_ETH_P_IPV6 || s->protocol == 0))
            return ipft_parse_ipv6(l3, raw, full, t);
    }
    return 0;
}

/* The event's device: the tracepoint's own `struct net_device *` argument where it has one (at net_dev_xmit a veth
 * has already moved skb->dev to its peer), else skb->dev. */
static __always_inline struct net_device *ipft_device(struct sk_buff *skb, struct net_device *dev)
{
    if (!dev)
        IPFT_SKB_FIELD(dev, skb, dev);
    return dev;
}

static __always_inline u32 ipft_ifindex(struct net_device *dev)
{
    int ifindex = 0;
    if (dev)
        bpf_probe_read_kernel(&ifindex, sizeof(ifindex), (char *)dev + __builtin_offsetof(struct net_device, ifindex));
    return ifindex;
}

/* Whether a transmit on the skb's device takes the packet out of the host: true for a device with a parent
 * (a PCI, virtio or USB NIC), false for virtual devices (veth, loopback, bridge, tunnels), whose transmit hands
 * the same skb back to the stack (veth: the peer's receive path), so its path goes on. */
/* skb->cloned: set by skb_clone() on both skbs that then share one data buffer (a new skb in a recycled buffer
 * has it clear). Its bit offset comes from BTF (IPFT_CLONED_BIT, -1 when unknown: no skb is taken for a clone). */
static __always_inline int ipft_is_clone(struct sk_buff *skb)
{
#if IPFT_CLONED_BIT >= 0
    u8 byte = 0;
    if (bpf_probe_read_kernel(&byte, 1, (char *)skb + IPFT_CLONED_BIT / 8) < 0)
        return 0;
    return (byte >> (IPFT_CLONED_BIT % 8)) & 1;
#else
    return 0;
#endif
}

/* The new headers of a tracked packet are a tunnel's (VXLAN, GENEVE, GRE, IPIP...) pushed before it, in the same
 * buffer: the skb's inner network header (zero from allocation until a tunnel sets it) holds IPv4 headers, or IPv6
 * headers without extension headers, with the tracked packet's fingerprint. (Not `skb->encapsulation`: tunnels
 * clear it for packets without checksum offload.) */
static __always_inline int ipft_encapsulated(struct sk_buff *skb, const struct ipft_skb *s,
                                             const struct ipft_track *track)
{
    u16 inner = 0;
    IPFT_SKB_FIELD(inner, skb, inner_network_header);
    if (!inner || inner == s->network_header || !track->fp)
        return 0;
    u8 raw[IPFT_L3_READ] = {};
    if (bpf_probe_read_kernel(raw, sizeof(raw), s->head + inner) < 0)
        return 0;
    const struct iphdr *iph = (const struct iphdr *)raw;
    if (iph->version == 4 && iph->ihl == 5)
        return ipft_ipv4_fp(bpf_ntohs(iph->id), iph->protocol, raw + 20) == track->fp;
    if (iph->version != 6)
        return 0;
    u8 next = raw[6];
    u16 udp_len = ((u16)raw[44] << 8) | raw[45];
    u32 fp = ipft_l4_word(next, raw + 40);
    if (track->payload_fp)
        fp ^= ipft_payload_word(next, udp_len, s->head + inner + 48, s->head + s->tail);
    return fp == track->fp;
}

/* A tracked packet found in a new data buffer (ipft_hit: pskb_expand_head moved it): its track and its buffer's
 * owner follow it there (a clone made later shares the new buffer; one made before keeps the old, and its entry). */
static __always_inline void ipft_follow_buffer(struct ipft_track *track, u64 key, u64 head)
{
    u64 old = track->head;
    struct ipft_buffer_owner *owner = ipft_buffers.lookup(&old);
    if (owner && owner->skb == key) {
        struct ipft_buffer_owner moved = *owner;
        ipft_buffers.update(&head, &moved);
    }
    track->head = head;
}

static __always_inline int ipft_leaves_host(struct net_device *dev)
{
    void *parent = 0;
    if (!dev)
        return 1;
    bpf_probe_read_kernel(&parent, sizeof(parent), (char *)dev + __builtin_offsetof(struct net_device, dev.parent));
    return parent != 0;
}

/* Kernel functions on kprobes share one entry point per skb argument position, which finds its probe by the traced
 * function's address (IPFT_KPROBE_IP) in ipft_funcs, filled from kallsyms by the collector. */
#ifdef IPFT_HAS_FUNCTIONS
struct ipft_func {
    u32 probe_id;
    u32 role;
};
BPF_HASH(ipft_funcs, u64, struct ipft_func, IPFT_FUNC_SLOTS);

/* The probe and role of the traced function at `ip` (its kallsyms address); -1 for an unknown one. With x86 IBT
 * a kprobe sits after the function's 4-byte endbr64, so a miss is retried there. */
static __always_inline int ipft_function_probe(u64 ip, u32 *probe_id, int *role)
{
    struct ipft_func *func = ipft_funcs.lookup(&ip);
    if (!func) {
        u64 before = ip - 4;
        func = ipft_funcs.lookup(&before);
        if (!func)
            return -1;
    }
    *probe_id = func->probe_id;
    *role = func->role;
    return 0;
}
#endif /* IPFT_HAS_FUNCTIONS */

/* One probe hit. A tracepoint or kfunc entry point passes its probe id and role; a kprobe entry point passes the
 * traced function's address (`func_ip`; 0 otherwise), looked up (a hash lookup, two on an IBT miss) only once the
 * skb may be tracked or its headers match a flow: other flows' packets, the common case, leave without it. Until
 * then its role is taken as a step's (a free's own function on an skb of another flow is parsed, then leaves). */
static __always_inline int ipft_hit(void *ctx, struct sk_buff *skb, u32 probe_id, int from_data, int role,
                                    u64 location, u32 reason, struct net_device *dev, int tp_kind, u64 func_ip,
                                    int typed)
{
    if (!skb)
        return 0;
    u64 key = (u64)skb;
    struct ipft_tuple t = {};
    struct ipft_track fresh = {};
    int first = 0;
    u32 flow_id = 0;
    u8 sampled = 0, gap = 0;
    u64 parent = 0, parent_ts = 0, now = 0;
    u32 relation = 0; /* IPFT_FLAG_CLONE, _ADOPT, _FRAGMENT or _SEGMENT on a first event */
    int counted = 0; /* a first event that the kernel counted as a packet matched */
    struct ipft_skb fields = {};
    if (ipft_skb_read(skb, &fields) < 0)
        return 0;
    unsigned char *head = fields.head;
    u64 number = ipft_skb_number(skb, typed);
    if (role == IPFT_ROLE_NO_START && !ipft_maybe_tracked(number))
        return 0; /* a free's own tracepoint or kfunc on an skb surely not tracked: not parsed (a kprobe's role
                   * is looked up later) */
    unsigned char *l3 = 0;
    int parsed = ipft_parse(&fields, &t, from_data, &l3);
    /* `t` stays in memory from here on (its address escapes into an empty asm): otherwise the compiler keeps each
     * field it compares in a register of its own, and a flow with both IPv6 addresses and a port (ten fields,
     * compared in three inlined filter functions) spilled them past the 512-byte BPF stack, which LLVM reports by
     * ending the process */
    __asm__ __volatile__("" : : "r"(&t) : "memory");
    int flow = parsed ? ipft_match_headers(&t) : -1;
    /* A fragment of a datagram traced in the last second belongs to it, ports or not (only the first fragment has
     * the L4 header): one lookup, for fragments only. */
    struct ipft_datagram *datagram = 0;
    struct ipft_datagram_key datagram_key = {};
    int datagram_noted = 0; /* this skb is the one its datagram was noted for */
    if (parsed && t.fragment != IPFT_FRAGMENT_NONE) {
        ipft_datagram_key_of(&t, t.datagram_id, &datagram_key);
        if (t.fragment >= IPFT_FRAGMENT_FIRST) {
            datagram = ipft_datagrams.lookup(&datagram_key);
            now = bpf_ktime_get_ns();
            if (datagram && datagram->skb == key) {
                datagram_noted = 1;
                datagram = 0;
            } else if (datagram && now - datagram->ts >= IPFT_CLONE_WINDOW_NS) {
                datagram = 0;
            }
            if (datagram && flow < 0)
                flow = datagram->flow_id;
        }
    }
    /* Headers that match none of the flows (or do not parse) at an address that is surely not tracked: not ours.
     * The common case on a busy node: one array read, no hash lookup (ipft_tracked_filter). */
    if (flow < 0 && !ipft_maybe_tracked(number))
        return 0;
#ifdef IPFT_HAS_FUNCTIONS
    if (func_ip && ipft_function_probe(func_ip, &probe_id, &role) < 0)
        return 0;
#endif
    /* The tuple copied onto itself (a read the verifier cannot see through): past this point the verifier knows
     * its fields only as unknown bytes, so the parse's outcomes (IP version, fragment state, which L4 fields were
     * read, at what offset) are one state to it rather than one walk of the rest each. On 5.10, with the kfunc
     * role patched in: 234,270 -> 40,957 instructions per step function. Only packets that match a flow or may
     * be tracked get here. */
    bpf_probe_read_kernel(&t, sizeof(t), &t);
    struct ipft_track *track = tracked.lookup(&key);
    u32 payload_word = 0; /* IPv6 UDP: part of the fingerprint if the tracked packet's had it (payload_fp), or of
                           * a packet first matched here */
    if (parsed && t.l4_read && (track || flow >= 0))
        payload_word = ipft_payload_word(t.l4proto, t.udp_len, l3 + t.l4_offset + 8, fields.head + fields.tail);
    int payload_in_fp = !track || track->payload_fp;
    if (payload_in_fp)
        t.fp ^= payload_word;
    u32 rewrite = 0, encap = 0;
    /* A tracked address whose headers changed is the same packet rewritten (NAT) when its data buffer and
     * fingerprint are the same (fingerprint words are ones NAT does not touch), or when the same fingerprint is
     * one no other packet of the flow has (an IPv4 identification, a TCP sequence number, IPv6 UDP's payload word)
     * in a new buffer: pskb_expand_head moves a cloned skb's data (one that the clone an unread packet socket
     * holds still shares) to a new buffer before NAT writes its headers. Otherwise, or with headers that no longer match
     * its flow, a different buffer or fingerprint, it is a new packet in a reused skb (its predecessor was freed
     * where no probe saw it): forget the old one. (A new buffer with the same headers stays a new packet: the
     * flow's next packet may have the skb, and its fingerprint may be the same: an IPv6 datagram's length, an
     * echo sequence, which a ping's reply shares with its request, or an IPv4 identification of 0, which some
     * kernels give an unconnected socket's datagrams sent with DF.) (Only the header keys are compared: a flow's
     * pcap filter and device/netns decide where a packet is first matched, not whether it is still the same.) */
    if (track && parsed) {
        u32 hash = ipft_tuple_hash(&t);
        int same_buffer = track->head == (u64)head;
        int same_fp = t.fp && track->fp && t.fp == track->fp;
        int other_fp = t.fp && track->fp && t.fp != track->fp;
        if (track->outer_hash && hash == track->outer_hash && same_buffer) {
            /* the packet under its tunnel headers */
        } else if (hash != track->tuple_hash && same_buffer && same_fp) {
            rewrite = IPFT_FLAG_REWRITE;
            track->tuple_hash = hash;
        } else if (hash != track->tuple_hash && same_buffer && ipft_encapsulated(skb, &fields, track)) {
            encap = IPFT_FLAG_ENCAP; /* followed on under the outer headers, to its drop or decapsulation */
            track->outer_hash = hash;
        } else if (hash != track->tuple_hash && same_fp
                   && ((t.ipversion == 4 && t.ip_id) || t.l4proto == 6 || track->payload_fp)) {
            rewrite = IPFT_FLAG_REWRITE; /* in a new buffer (same_buffer is false here) */
            track->tuple_hash = hash;
            ipft_follow_buffer(track, key, (u64)head);
        } else if (hash != track->tuple_hash && ipft_encapsulated(skb, &fields, track)) {
            encap = IPFT_FLAG_ENCAP; /* in a new buffer (skb_cow_head moved it before the tunnel's headers) */
            track->outer_hash = hash;
            ipft_follow_buffer(track, key, (u64)head);
        } else if (!same_buffer || other_fp || (hash != track->tuple_hash && !ipft_flow_headers(track->flow_id, &t))) {
            ipft_forget(&key, number);
            track = 0;
        }
    }
    /* Read by a socket, then at a tracepoint that is neither a free nor another read: a new packet (IPFT_TP_*). */
    if (track && track->read && tp_kind == IPFT_TP_OTHER && role != IPFT_ROLE_CONSUME && role != IPFT_ROLE_DROP) {
        ipft_forget(&key, number);
        track = 0;
    }
    if (!track && !payload_in_fp)
        t.fp ^= payload_word; /* a new packet in the skb: its own fingerprint, with its payload word */
    /* Headers that do not parse as IP at a tracked address, of another protocol (an ARP request in the skb of a
     * datagram freed unseen), or of an skb that has neither a protocol nor a network header, which no IP packet
     * past its first match lacks (a unix socket's message in the skb of a TCP segment freed unseen, whose drop in
     * unix_stream_connect would be taken for the segment's): not ours. */
    if (track && !parsed
        && ((fields.protocol && track->protocol && fields.protocol != track->protocol)
            || (!fields.protocol && (fields.network_header == 0 || fields.network_header == (u16)~0U)))) {
        ipft_forget(&key, number);
        return 0;
    }
    u32 left = 0;
    if (role == IPFT_ROLE_EGRESS) {
        if (ipft_leaves_host(ipft_device(skb, dev)))
            left = IPFT_FLAG_LEFT;
        else
            role = IPFT_ROLE_STEP; /* a virtual device: the packet goes on */
    }
    if (track) {
        if (role == IPFT_ROLE_NO_START)
            role = IPFT_ROLE_STEP;
        if (tp_kind == IPFT_TP_SOCKET_READ)
            track->read = 1;
        flow_id = track->flow_id;
        sampled = track->sampled;
        gap = track->lost;
        if (t.ipversion == 6 && t.fragment == IPFT_FRAGMENT_FIRST && !datagram_noted && !datagram) {
            /* a tracked IPv6 datagram became its first fragment (ip6_fragment keeps the skb; the identification is
             * chosen there): its other fragments are found by it from now on */
            struct ipft_datagram whole = {.skb = key, .ts = now, .flow_id = flow_id, .sampled = sampled};
            ipft_datagrams.update(&datagram_key, &whole);
        }
    } else {
        if (flow < 0 || role == IPFT_ROLE_NO_START)
            return 0;
        u32 armed_index = 0;
        u32 *armed = ipft_armed.lookup(&armed_index);
        if (!armed || !*armed)
            return 0; /* no packet starts before every probe is attached */
        if (!now)
            now = bpf_ktime_get_ns();
        if (datagram) {
            flow = datagram->flow_id; /* a fragment: its datagram passed the flow's filters */
        } else {
            /* + pcap filter, --ifname / --netns (of the event's device): once per packet */
            flow = ipft_match_first(&t, skb, ipft_device(skb, dev), fields.data, l3);
            if (flow < 0)
                return 0;
            if (!ipft_module_match(skb, &t))
                return 0;
        }
        /* TCP or UDP: a GSO packet (noted below when it is a packet of its own), or else maybe one's segment */
        u16 gso_size = 0, gso_segs = 0;
        struct ipft_segmented *segmented = 0;
        struct ipft_datagram_key flow_key = {};
        if (!datagram && (t.seq_read || (t.l4proto == 17 && t.udp_len >= 8))) {
            ipft_datagram_key_of(&t, ((u32)t.sport << 16) | t.dport, &flow_key);
            ipft_gso(skb, head, &gso_size, &gso_segs);
            if (!gso_size) {
                segmented = ipft_segmented.lookup(&flow_key);
                if (segmented) {
                    /* TCP: the sequence number's offset in the range; UDP: the identification's among the
                     * segments' */
                    u32 offset = t.seq_read ? t.tcp_seq - segmented->seq : (u16)(t.ip_id - segmented->seq);
                    if (!(segmented->segs_left && segmented->skb != key && offset < segmented->span
                          && now - segmented->ts < IPFT_CLONE_WINDOW_NS
                          && (t.seq_read || (t.udp_len > 8 && t.udp_len - 8 <= segmented->gso_size))))
                        segmented = 0;
                }
                if (segmented)
                    flow = segmented->flow_id;
            }
        }
        fresh.head = (u64)head;
        fresh.fp = t.fp;
        fresh.payload_fp = payload_word != 0;
        fresh.tuple_hash = ipft_tuple_hash(&t);
        fresh.protocol = fields.protocol;
        fresh.flow_id = flow;
        u64 buffer = (u64)head;
        struct ipft_buffer_owner *owner = ipft_buffers.lookup(&buffer);
        /* (an orphan ended: a later copy may be given its freed skb) */
        int same_packet = owner && (owner->skb != key || owner->orphan) && owner->flow_id == flow
                          && owner->fp == t.fp
                          && now - owner->ts < (owner->orphan ? IPFT_ORPHAN_WINDOW_NS : IPFT_CLONE_WINDOW_NS);
        /* A clone first seen past the clone window, at its free or with no socket, while its packet still holds
         * the buffer (tracked there): a copy of a packet that still waits, such as the neighbour's next probe's of
         * a packet in its queue (seen first on the function backends). (A TCP retransmission, which has its
         * socket, stays a packet of its own.) */
        if (!same_packet && owner && !owner->orphan && owner->skb != key && owner->flow_id == flow
            && owner->fp == t.fp && ipft_is_clone(skb) && (role != IPFT_ROLE_STEP || !ipft_has_socket(skb))) {
            u64 holder_key = owner->skb;
            struct ipft_track *holder = tracked.lookup(&holder_key);
            same_packet = holder && holder->head == buffer;
        }
        if (datagram) {
            parent = datagram->skb; /* a fragment of a traced datagram: part of it, sampled as it was */
            parent_ts = datagram->ts_first ? datagram->ts : 0;
            relation = IPFT_FLAG_FRAGMENT;
            fresh.sampled = datagram->sampled;
        } else if (segmented) {
            parent = segmented->skb; /* a segment of a traced GSO packet: part of it, sampled as it was */
            parent_ts = segmented->ts;
            relation = IPFT_FLAG_SEGMENT;
            fresh.sampled = segmented->sampled;
            segmented->segs_left -= 1;
        } else if (same_packet && owner->orphan
                   && (role == IPFT_ROLE_STEP
                       || (role == IPFT_ROLE_DROP && (ipft_sent_here(skb) || !ipft_buffer_shared(skb, head))))) {
            /* the packet of a clone that ended before it was seen (a neighbour probe's copy: the packet waited in
             * the neighbour's queue for ARP/ND): matched now, sampled as its clone was, and it adopts the clone.
             * Seen first at its drop when the neighbour never answered (NEIGH_FAILED): no copy, since it has its
             * socket (a local packet; TCP's is itself a clone, of its write queue's skb) or is the last skb holding
             * the buffer, its copies freed before it. */
            parent = owner->skb;
            parent_ts = owner->ts;
            relation = IPFT_FLAG_ADOPT;
            fresh.sampled = owner->sampled;
            ipft_matched(flow);
            counted = 1;
            struct ipft_buffer_owner mine = {.skb = key, .ts = now, .fp = t.fp, .flow_id = flow,
                                             .sampled = fresh.sampled};
            ipft_buffers.update(&buffer, &mine);
        } else if (same_packet && owner->orphan && ipft_is_clone(skb)) {
            /* another copy ending before its packet was seen (the neighbour probes again): it follows the earlier
             * one, which its packet adopts through it */
            parent = owner->skb;
            parent_ts = owner->ts;
            relation = IPFT_FLAG_CLONE | IPFT_FLAG_FOLLOWS;
            fresh.sampled = owner->sampled;
            struct ipft_buffer_owner orphan = {.skb = key, .ts = now, .fp = t.fp, .flow_id = flow,
                                               .sampled = fresh.sampled, .orphan = 1};
            ipft_buffers.update(&buffer, &orphan);
        } else if (same_packet && ipft_is_clone(skb)) {
            parent = owner->skb; /* a clone: the same packet, sampled as it was, not matched again */
            parent_ts = owner->ts;
            relation = IPFT_FLAG_CLONE;
            fresh.sampled = owner->sampled;
        } else if (role != IPFT_ROLE_STEP && ipft_is_clone(skb)
                   && !(role == IPFT_ROLE_DROP && ipft_sent_here(skb))) {
            /* a clone ending before its packet was seen: not a packet of its own (not matched); its packet adopts
             * it when first seen (see above). (Not a dropped one a local socket sent: a packet dropped where it
             * waited unseen, as in the neighbour's queue, while a copy of it still lives.) */
            relation = IPFT_FLAG_CLONE;
            fresh.sampled = IPFT_SAMPLED();
            struct ipft_buffer_owner orphan = {.skb = key, .ts = now, .fp = t.fp, .flow_id = flow,
                                               .sampled = fresh.sampled, .orphan = 1};
            ipft_buffers.update(&buffer, &orphan);
        } else {
            fresh.sampled = IPFT_SAMPLED();
            ipft_matched(flow);
            counted = 1;
            if (role == IPFT_ROLE_STEP || (role == IPFT_ROLE_DROP && ipft_is_clone(skb))) {
                /* (a packet seen first at its drop while a copy lives: the copy, freed after it, is its clone) */
                struct ipft_buffer_owner mine = {.skb = key, .ts = now, .fp = t.fp, .flow_id = flow,
                                                 .sampled = fresh.sampled};
                ipft_buffers.update(&buffer, &mine);
            }
        }
        /* A packet of its own (new, or one adopting its neighbour probe's copy: the first packet to a neighbour) */
        if (counted && datagram_key.ipversion) { /* a datagram that is or may become fragments */
            struct ipft_datagram whole = {.skb = key, .ts = now, .flow_id = flow, .sampled = fresh.sampled,
                                          .ts_first = 1};
            ipft_datagrams.update(&datagram_key, &whole);
        }
        if (counted && gso_size && gso_segs > 1) { /* its segments are found by it */
            struct ipft_segmented whole = {.skb = key, .ts = now, .seq = t.seq_read ? t.tcp_seq : t.ip_id,
                                           .span = t.seq_read ? (u32)gso_size * gso_segs : gso_segs,
                                           .segs_left = gso_segs, .flow_id = flow, .sampled = fresh.sampled,
                                           .gso_size = gso_size};
            ipft_segmented.update(&flow_key, &whole);
        }
        flow_id = fresh.flow_id;
        sampled = fresh.sampled;
        first = 1;
        fresh.read = tp_kind == IPFT_TP_SOCKET_READ;
        if (role == IPFT_ROLE_STEP)
            ipft_start_tracking(&key, number, &fresh);
    }

    u32 slot = flow_id * IPFT_NUM_PROBES + probe_id;
    u64 *hit = hits.lookup(&slot);
    if (hit)
        *hit += 1;
    if (role == IPFT_ROLE_DROP) {
        struct ipft_drop_key drop_key = {.location = location, .flow_id = flow_id, .reason = reason};
        u64 zero = 0;
        u64 *drop_count = drops.lookup_or_try_init(&drop_key, &zero);
        if (drop_count)
            *drop_count += 1;
    }
    if (role != IPFT_ROLE_STEP && !first && track)
        ipft_forget(&key, number);
    if (!sampled) {
        if (first && counted)
            ipft_untraced(flow_id, IPFT_UNTRACED_SAMPLED_OUT);
        return 0;
    }

    struct ipft_event *event = events.ringbuf_reserve(sizeof(struct ipft_event));
    if (!event) {
        ipft_stat(IPFT_STAT_LOST);
        if (first && counted)
            ipft_untraced(flow_id, IPFT_UNTRACED_RING_FULL);
        if (role == IPFT_ROLE_STEP) {
            struct ipft_track *current = tracked.lookup(&key);
            if (current) {
                if (first)
                    current->sampled = 0; /* its first event (the headers) is lost: send none of this packet */
                else if (current->lost < 255)
                    current->lost += 1; /* the next event says the path has a hole, and how many */
            }
        } else if (!first) {
            u8 one = 1;
            ipft_lost_ends.update(&key, &one);
        }
        return 0;
    }
    event->ts = now ? now : bpf_ktime_get_ns();
    event->parent = parent;
    event->parent_ts = parent_ts;
    event->skb = key;
    event->location = location;
    event->probe_id = probe_id;
    event->cpu = bpf_get_smp_processor_id();
    u32 len = 0;
    IPFT_SKB_FIELD(len, skb, len);
    event->len = len;
    event->ifindex = ipft_ifindex(ipft_device(skb, dev));
    event->reason = reason;
    event->flow_id = flow_id;
    event->flags = IPFT_FLAG_SAMPLED | (gap ? IPFT_FLAG_GAP : 0) | left | rewrite | encap | ((u32)gap << IPFT_LOST_SHIFT);
    if (first) {
        event->flags |= IPFT_FLAG_TUPLE | relation;
        if (ipft_lost_ends.lookup(&key)) {
            event->flags |= IPFT_FLAG_PREV_LOST;
            ipft_lost_ends.delete(&key);
        }
    }
    if (first || rewrite || encap) { /* the headers: where first matched, rewritten, and encapsulated */
        event->ipversion = t.ipversion;
        event->l4proto = t.l4proto;
        __builtin_memcpy(event->saddr, t.saddr, 16);
        __builtin_memcpy(event->daddr, t.daddr, 16);
        event->sport = t.sport;
        event->dport = t.dport;
    } else {
        event->ipversion = 0;
        event->l4proto = 0;
        __builtin_memset(event->saddr, 0, 16);
        __builtin_memset(event->daddr, 0, 16);
        event->sport = 0;
        event->dport = 0;
    }
    __builtin_memset(event->data, 0, sizeof(event->data));
    ipft_module_data(skb, &t, event->data);
    /* Wake the reader every IPFT_WAKEUP_EVERY records of this CPU: it reads at least once per poll interval
     * anyway, and a wake-up per record (the default once the reader has caught up) costs more than the record. */
    u32 sent_index = IPFT_STAT_EVENTS;
    u64 *sent = stats.lookup(&sent_index);
    u64 wakeup = BPF_RB_NO_WAKEUP;
    if (sent) {
        *sent += 1;
        if (*sent % IPFT_WAKEUP_EVERY == 0)
            wakeup = BPF_RB_FORCE_WAKEUP;
    }
    events.ringbuf_submit(event, wakeup);
    return 0;
}

/* A tracepoint's or kfunc's hit: its probe id and role known to the entry point. */
static __always_inline int ipft_handle(void *ctx, struct sk_buff *skb, u32 probe_id, int from_data, int role,
                                       u64 location, u32 reason, struct net_device *dev, int tp_kind)
{
    return ipft_hit(ctx, skb, probe_id, from_data, role, location, reason, dev, tp_kind, 0, 0);
}

/* A kfunc entry point's hit (its probe id and role patched in: ipft_kfunc_probe), its skb a BTF-typed pointer. */
static __always_inline int ipft_kfunc(void *ctx, struct sk_buff *skb, u32 probe_id, int role)
{
    return ipft_hit(ctx, skb, probe_id, 0, role, 0, 0, 0, IPFT_TP_NONE, 0, 1);
}

/* A kprobe entry point (one per skb argument position, shared by the functions there) hands ipft_hit the traced
 * function's address, looked up only for a packet it may trace (ipft_function_probe). */
#ifdef IPFT_HAS_FUNCTIONS
static __always_inline int ipft_function(void *ctx, struct sk_buff *skb, u64 ip)
{
    return ipft_hit(ctx, skb, 0, 0, IPFT_ROLE_STEP, 0, 0, 0, IPFT_TP_NONE, ip, 0);
}
#endif /* IPFT_HAS_FUNCTIONS */

/* A kfunc entry point's probe, (role << 32) | probe id. fentry binds a program to one function, so each function
 * loads its own copy of the entry point, in which the collector replaces this 64-bit constant with that
 * function's (program.KFUNC_PROBE_PLACEHOLDER, patch_ld_imm64). The verifier then knows the role and walks its
 * path alone (with the role read from a map, 5.10's verifier walked 448,264 instructions per function; with it
 * patched in, 234,270 for a step function), and no lookup is needed. In an asm statement, so the compiler cannot fold
 * it into the comparisons. */
static __always_inline u64 ipft_kfunc_probe(void)
{
    u64 probe;
    asm volatile("%0 = 0x1badc0de5eed1234 ll" : "=r"(probe));
    return probe;
}

#endif /* IPFT_MODULE_CHECK */

/* @ipft:entries */
