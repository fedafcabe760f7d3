#!/bin/sh
# normalise.sh FILE: FILE with each node name written as <role><n> (n: its place
# among the nodes of its role in lava-group), and the "node:key=value" pairs of
# each reply in sorted order: node names and the order of senders differ from
# one lab to another, nothing else may.
lava-group | awk -F '\t' '{ n[$2]++; print $1 "\t" $2 n[$2] }' > names.tab
awk -F '\t' 'NR == FNR { name[$1] = $2; next }
{
	line = $0
	for (k in name) gsub(k, "{" name[k] "}", line)
	if (match(line, /^<[A-Z_]+_COMPLETE /)) {
		head = substr(line, 1, RLENGTH - 1)
		body = substr(line, RLENGTH + 1)
		sub(/>$/, "", body)
		gsub(/ [{]/, "\n{", body)
		count = split(body, part, "\n")
		for (i = 2; i <= count; i++) {
			for (j = i; j > 1 && part[j - 1] > part[j]; j--) {
				t = part[j]; part[j] = part[j - 1]; part[j - 1] = t
			}
		}
		line = head
		for (i = 1; i <= count; i++) line = line " " part[i]
		line = line ">"
	}
	print line
}' names.tab "$1"
