#!/bin/sh
# iperf3 between two MultiNode boards, the way LAVA test writers do it: the
# server sends its address with lava-send; the client lava-waits for it and
# reads it from LAVA's cache file, /tmp/lava_multi_node_cache.txt.
set -e
MODE=""
ETH=eth0
TIME=1
while getopts "sce:t:" opt; do
	case "$opt" in
		s) MODE=server ;;
		c) MODE=client ;;
		e) ETH="$OPTARG" ;;
		t) TIME="$OPTARG" ;;
		*) echo "usage: $0 -s [-e IFACE] | -c [-t SECONDS]" >&2; exit 2 ;;
	esac
done
command -v iperf3 >/dev/null || { lava-test-case iperf3-installed --result fail; exit 1; }
mkdir -p output

if [ "$MODE" = server ]; then
	ipaddr=$(lava-echo-ipv4 "$ETH")
	iperf3 -s -1 -B "$ipaddr" > output/server.log 2>&1 &
	# listening before the client is told where
	tries=0
	until ss -ltn | grep -q "$ipaddr:5201 "; do
		tries=$((tries + 1))
		[ "$tries" -lt 300 ] || { lava-test-case iperf3-server-listens --result fail; exit 1; }
		sleep 0.1
	done
	lava-test-case iperf3-server-listens --result pass
	lava-send server-ready ipaddr="$ipaddr"
	lava-wait client-done
	wait
	cat output/server.log
else
	lava-wait server-ready
	cat /tmp/lava_multi_node_cache.txt
	SERVER=$(grep ipaddr /tmp/lava_multi_node_cache.txt | awk -F= '{print $NF}')
	lava-test-case server-address-from-cache --shell test -n "$SERVER"
	iperf3 -c "$SERVER" -t "$TIME" 2>&1 | tee output/client.log
	# "[  5]   0.00-1.00  sec  1.1 GBytes  9.6 Gbits/sec  [retransmits]  sender"
	awk '$NF == "sender" || $NF == "receiver" { print $NF, $7, $8 }' output/client.log > output/rates
	while read -r role rate units; do
		lava-test-case "iperf3-$role" --result pass --measurement "$rate" --units "$units"
	done < output/rates
	lava-send client-done
fi
