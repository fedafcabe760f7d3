#!/bin/sh
# lava-lib-style.sh API ID [KEY=VALUE...]: one MultiNode call made the way LAVA's
# own lava_test_shell/multi_node/lava-multi-node.lib makes it, without lavamq's
# helpers, to check that the dispatcher answers LAVA's grammar as LAVA does:
#   - the signal is printed by an unquoted echo: "<LAVA_MULTI_NODE> <API ID k=v ...>"
#     (lava-send: no reply is read);
#   - the reply is read with a plain `read` loop until a line holding
#     "<API_COMPLETE"; that line is appended to $TRANSCRIPT as it was read;
#   - with NEED_ACK set, "<API_COMPLETE_ACK>" is printed back, as the lib does;
#   - the cache is then written as the lib writes it: removed, the reply split
#     before each " <digits>:", and each "key=value" piece appended by an
#     unquoted echo; "nack" is an error.
api="$1"
shift
reply="<${api}_COMPLETE"
cache="${LAVA_MULTI_NODE_CACHE:-/tmp/lava_multi_node_cache.txt}"
# shellcheck disable=SC2048,SC2086
echo "<LAVA_MULTI_NODE>" "<$api" $*">"
[ "$api" = LAVA_SEND ] && exit 0
while read line; do
	case "$line" in
		*"$reply"*) break ;;
	esac
done
echo "$line" >> "${TRANSCRIPT:?}"
if [ -n "$NEED_ACK" ]; then
	echo "${reply}_ACK>"
fi
# shellcheck disable=SC2086
payload=$(echo $line | sed -e "s/^$reply//" -e 's/>$//')
mkdir -p "$(dirname "$cache")"
rm -f "$cache"
status=0
for item in $(echo "$payload" | sed -E 's/ ([0-9]+:)/\n\1/g' | tr ' ' '\001'); do
	item=$(echo "$item" | tr '\001' ' ')
	case "$item" in
		nack) status=1 ;;
		?*=?*) echo $item >> "$cache" ;;
	esac
done
exit $status
