#!/bin/sh
# The server's side, as lava-multi-node.lib would make each call.
set -e
./lava-lib-style.sh LAVA_SEND values greeting=hello world
./lava-lib-style.sh LAVA_SEND multi a=1 b=2
./lava-lib-style.sh LAVA_SEND nodata
./lava-lib-style.sh LAVA_SEND everyone "me=$(lava-self)"
# every node has sent what the waits below ask for once this sync is passed
NEED_ACK=yes ./lava-lib-style.sh LAVA_SYNC sent
./lava-lib-style.sh LAVA_WAIT_ALL fromclients client
./lava-lib-style.sh LAVA_WAIT_ALL everyone
./lava-lib-style.sh LAVA_SYNC done
