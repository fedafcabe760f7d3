#!/bin/sh
# A client's side, as lava-multi-node.lib would make each call.
set -e
cache="${LAVA_MULTI_NODE_CACHE:-/tmp/lava_multi_node_cache.txt}"
./lava-lib-style.sh LAVA_WAIT values
sed 's/^[^:]*:/{sender}:/' "$cache" >> "$TRANSCRIPT"
NEED_ACK=yes ./lava-lib-style.sh LAVA_WAIT multi
./lava-lib-style.sh LAVA_WAIT nodata
if [ -e "$cache" ]; then echo "cache left after a reply without data" >> "$TRANSCRIPT"; fi
./lava-lib-style.sh LAVA_SEND fromclients "me=$(lava-self)"
./lava-lib-style.sh LAVA_SEND everyone "me=$(lava-self)"
./lava-lib-style.sh LAVA_SYNC sent
./lava-lib-style.sh LAVA_WAIT_ALL everyone
./lava-lib-style.sh LAVA_SYNC done
